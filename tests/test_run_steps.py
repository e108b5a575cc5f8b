"""Issue 17: the run's steps, each used alone, and validation that reports every problem at once.

The run's plan is resolved once (``recipe.engine.plan``), an attempt is opened in the run folder
(``recipe.engine.attempt``), executed (``recipe.engine.execute``) and accounted (``recipe.engine.accounting``).
A bad config is one report naming each bad key, before any request, server or cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

import recipe
from recipe.errors import ConfigError

from conftest import cli, outputs, write_jsonl

STUB = ["recipe=generate", "backend=openai", "model.name=m", "progress=false"]
# One unknown key, one bad value, and a bad parameter in each of two stages.
BAD = ["+bogus_key=1", "backend.timeout=-1", "+recipe.stages.read.bogus_param=1",
       "+recipe.stages.generate.schema_retries=-1"]
NAMED = ["bogus_key: unknown key", "backend.timeout=-1", "recipe.stages.read.bogus_param: unknown parameter",
         "recipe.stages.generate.schema_retries: must be >= 0"]


def stub_config(tmp_path: Path, server, *extra: str):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    return recipe.compose([*STUB, f"input={source}", f"backend.api_base={server.base_url}",
                           "backend.api_key=sk-test", *extra])


# --- validation that gathers everything ---------------------------------------------------------

def test_compose_reports_an_unknown_key_a_bad_value_and_two_bad_stages_together(tmp_path):
    with pytest.raises(ConfigError) as caught:
        recipe.compose([*STUB, *BAD])
    message = str(caught.value)
    for needle in NAMED:
        assert needle in message, (needle, message)
    assert message.startswith("invalid config: ") and message.count("; ") == 3, message


def test_run_refuses_a_config_with_every_problem_named_and_sends_nothing(tmp_path, stub_server):
    """A config changed after composing (a notebook) is checked as a whole by ``run``."""
    server = stub_server()
    cfg = stub_config(tmp_path, server)
    with open_dict(cfg):
        cfg.bogus_key = 1
        cfg.backend.timeout = -1.0
        cfg.recipe.stages.read.bogus_param = 1
        cfg.recipe.stages.generate.schema_retries = -1
    with pytest.raises(ConfigError) as caught:
        recipe.run(cfg, output_dir=str(tmp_path / "out"))
    for needle in NAMED:
        assert needle in str(caught.value), (needle, str(caught.value))
    assert server.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_the_cli_prints_every_problem_on_one_error_line_before_anything_starts(tmp_path, stub_server):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    # ...and a provider litellm does not know: the backends' problems join the same line
    result = cli(tmp_path, *STUB, f"input={source}", f"backend.api_base={server.base_url}", *BAD,
                 "backend.provider=nosuchprovider", env={"OPENAI_API_KEY": "sk-test"}, timeout=120, check_exit=2)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: "), result.stderr
    for needle in NAMED + ["backend.provider='nosuchprovider': not a provider litellm knows"]:
        assert needle in lines[0], (needle, lines[0])
    assert server.stats()["requests"] == 0 and not (tmp_path / "runs").exists()


def test_build_stages_names_every_bad_stage_not_just_the_first():
    from recipe.stages.build import build_stages

    stages = {"read": {"_target_": "recipe.stages.ReadStage", "seeds": ["x"], "colour": "red"},
              "nothing": {"prompt": "no target"},
              "judge": {"_target_": "recipe.stages.GenerateStage", "prompt": "{{ seed }}", "schema_retries": -3},
              "write": {"_target_": "recipe.stages.WriteStage"}}
    with pytest.raises(ConfigError) as caught:
        build_stages({"stages": stages}, None, "/nonexistent/out")
    problems = str(caught.value).removeprefix("invalid config: ").split("; ")
    assert [p.split(":")[0] for p in problems] == ["recipe.stages.read.colour", "recipe.stages.nothing",
                                                   "recipe.stages.judge.schema_retries"], problems


def test_a_stage_problem_and_its_unknown_parameter_are_both_reported():
    from recipe.stages.build import stage_problems

    problems = stage_problems({"stages": {"gen": {"_target_": "recipe.stages.GenerateStage", "prompt": "p",
                                                  "schema_retries": -1, "tempreature": 0.5}}})
    assert len(problems) == 2 and problems[0].startswith("recipe.stages.gen.tempreature: unknown parameter (")
    assert problems[1] == "recipe.stages.gen.schema_retries: must be >= 0, not -1"


def test_a_missing_input_is_not_a_config_problem_but_is_refused_when_the_run_starts(tmp_path):
    """Validation checks the stages' values; whether the input exists is the run's check."""
    cfg = recipe.compose([*STUB, f"input={tmp_path / 'later.jsonl'}"])  # composes: the file may come later
    with pytest.raises(ConfigError, match="input file not found"):
        recipe.run(cfg, output_dir=str(tmp_path / "out"))


# --- the steps, each alone ----------------------------------------------------------------------

def test_the_plan_is_the_resolved_config_with_the_same_identity(tmp_path, stub_server, monkeypatch):
    from recipe.config import identity as run_identity
    from recipe.engine import plan as run_plan
    from recipe.config.env_keys import EnvKey

    monkeypatch.setenv("S17_TEST_KEY", "sk-secret-in-env")
    server = stub_server()
    cfg = stub_config(tmp_path, server, "backend.api_key=${oc.env:S17_TEST_KEY}")
    plan = run_plan.resolve(cfg, output_dir=str(tmp_path / "out"))
    assert plan.config_hash == run_identity.config_hash(run_identity.identity(cfg))
    assert plan.spec.api_key == EnvKey("S17_TEST_KEY") and "sk-secret" not in json.dumps(plan.ident)
    assert [s.name for s in plan.stages] == ["read", "generate", "write"]
    assert plan.stages[1].counts_progress and plan.stages[1].client == plan.spec
    assert plan.stages[2].path == str(tmp_path / "out") and plan.output_dir == str(tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # resolved: nothing written yet
    assert server.stats()["requests"] == 0


def test_an_attempt_opened_and_accounted_without_executing_is_recorded_as_stopped(tmp_path, stub_server):
    from recipe.engine import accounting as run_accounting
    from recipe.engine import attempt as run_attempt
    from recipe.engine import plan as run_plan

    server = stub_server()
    plan = run_plan.resolve(stub_config(tmp_path, server, "dask.partition_size=2"), output_dir=str(tmp_path / "out"))
    with plan.folder.locked():
        attempt = run_attempt.start(plan)
        assert (attempt.todo, attempt.kept, attempt.record["of_partitions"]) == ([0, 1], {}, 2)
        stats = run_accounting.account(plan, attempt)
    assert (stats["records"], stats["failed"], stats["requests"], stats["attempts"]) == (0, 0, 0, 1)
    saved = run_attempt.read_attempts(plan.folder)[0]
    assert [(a["attempt"], a["outcome"], a["partitions_to_do"]) for a in saved] == [(1, "stopped", 2)]
    assert run_accounting.notes(plan, stats) == ["no records were produced: the input is empty"]
    assert server.stats()["requests"] == 0


def test_the_steps_in_order_make_the_run(tmp_path, stub_server):
    from recipe.engine import accounting as run_accounting
    from recipe.engine import attempt as run_attempt
    from recipe.engine import execute as run_execute
    from recipe.engine import plan as run_plan

    server = stub_server()
    plan = run_plan.resolve(stub_config(tmp_path, server), output_dir=str(tmp_path / "out"))
    with plan.folder.locked():
        attempt = run_attempt.start(plan)
        plan = attempt.plan
        run_execute.execute(plan, attempt)
        attempt.outcome = "completed"
        stats = run_accounting.account(plan, attempt)
    assert (stats["records"], stats["failed"], stats["requests"]) == (3, 0, 3)
    rows = outputs(tmp_path / "out")
    assert sorted(r["response"] for r in rows) == ["echo: a", "echo: b", "echo: c"]
    assert server.stats()["requests"] == 3


def test_dask_opens_as_threads_without_workers_and_refuses_a_dashboard_there():
    from recipe.config.schema import DaskConfig
    from recipe.engine import cluster as run_dask

    with run_dask.open_dask(DaskConfig(n_workers=0, threads_per_worker=2)) as client:
        assert client is None
    with pytest.raises(ConfigError, match="dask.dashboard=true needs a cluster"):
        with run_dask.open_dask(DaskConfig(n_workers=0, dashboard=True)):
            pass


def test_run_does_not_compose_or_resolve_the_config_more_than_once(tmp_path, stub_server):
    """``run`` reads a config's interpolations once, the stages' included: a resolver that counts
    its calls says so (checking, naming the run folder and building the stages all read the plan)."""
    server = stub_server()
    calls: list[str] = []
    OmegaConf.register_new_resolver("s17_count", lambda: calls.append("x") or "answer", replace=True)
    cfg = stub_config(tmp_path, server, "+recipe.note=${s17_count:}",
                      "recipe.stages.generate.output_field=${s17_count:}")
    calls.clear()
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert calls == ["x", "x"]  # once for each of the two keys
    assert summary.records == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()]
    assert sorted(r["answer"] for r in rows) == ["echo: a", "echo: b", "echo: c"]


def test_batch_on_a_provider_without_a_batch_api_is_refused_before_any_request(tmp_path):
    """The providers table says which providers have a batch API: Ollama has none, so
    ``backend.batch=true`` there is one config line, not a failed run after the cluster started."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    cfg = recipe.compose(["backend=ollama", "backend.api_base=http://127.0.0.1:9", "model.name=m",
                          "backend.batch=true", f"input={source}", "progress=false"])
    with pytest.raises(ConfigError) as caught:
        recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert "backend.batch=true: ollama has no batch API" in str(caught.value)
    assert not (tmp_path / "out").exists()
    # the same batch flag on a provider with a batch API passes the check (it fails later, on the dead port)
    ok = recipe.compose(["backend=openai", "backend.api_base=http://127.0.0.1:9", "backend.api_key=k",
                         "model.name=m", "backend.batch=true", f"input={source}", "progress=false"])
    from recipe.engine.preflight import backend_problems

    assert backend_problems(OmegaConf.to_container(ok, resolve=True)) == []


def test_the_model_as_judge_is_the_one_judge_stage_not_a_reward_stage_mode():
    """One judge stage: RewardStage's old ``mode: judge`` is refused with the stage to use instead."""
    from recipe.stages.build import stage_problems

    problems = stage_problems({"stages": {"score": {"_target_": "recipe.stages.RewardStage", "mode": "judge"}}})
    assert any("recipe.stages.score.mode" in p and "recipe.stages.JudgeStage" in p for p in problems), problems
    assert stage_problems({"stages": {"score": {"_target_": "recipe.stages.RewardStage"}}}) == []


def test_the_plan_is_typed_and_frozen_and_a_change_makes_another(tmp_path, stub_server):
    """The config crosses into the engine once: the plan's settings are typed objects, the plan
    cannot be changed, and an attempt's changes (its budget ledger) make a new plan whose stages
    carry them while the run's plan and its stages stay as they were."""
    import dataclasses

    from recipe.config.schema import BudgetConfig, DaskConfig
    from recipe.engine import attempt as run_attempt
    from recipe.engine import plan as run_plan

    server = stub_server()
    cfg = stub_config(tmp_path, server, "dask.partition_size=2", "budget.max_usd=5", "+model.price={input_per_mtok:1,output_per_mtok:2}")
    plan = run_plan.resolve(cfg, output_dir=str(tmp_path / "out"))
    assert plan.dask == DaskConfig(partition_size=2) and plan.budget == BudgetConfig(max_usd=5.0)
    assert plan.target is None and plan.metrics is None and plan.has_input and not plan.progress
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.spec = None  # type: ignore[misc]
    with plan.folder.locked():
        attempt = run_attempt.start(plan)
    changed = attempt.plan
    assert plan.spec.budget is None and plan.stages[1].client.budget is None  # the run's plan untouched
    assert changed.spec.budget is not None and changed.stages[1].client == changed.spec
    assert changed.stages[1] is not plan.stages[1] and changed.stages[0] is plan.stages[0]
