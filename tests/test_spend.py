"""Spend less: a hard budget (``budget.max_usd`` / ``budget.max_tokens``) across workers and attempts.

The stub serves ``gpt-4o`` and reports a fixed usage per answer (1000 prompt + 500 completion
tokens), so each request costs exactly 1000 * 2.5e-6 + 500 * 1e-5 = $0.0075 at litellm's price.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

import recipe
from conftest import SRC, cli, cli_process, outputs, write_prompts

PROMPT, COMPLETION = 1000, 500
GPT4O_REQUEST_USD = PROMPT * 2.5e-6 + COMPLETION * 1e-5  # litellm's gpt-4o price, per request on the stub


def priced(server, source: Path, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            "model.name=gpt-4o", "progress=false", f"input={source}", "sampling.max_tokens=500",
            "dask.partition_size=10", *extra]


def stats_of(tmp_path: Path) -> tuple[Path, dict]:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if (p / "stats.json").exists()]
    return folder, json.loads((folder / "stats.json").read_text())


def test_cli_budget_stops_then_the_printed_command_resumes_and_finishes(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 40)
    first = cli(tmp_path, *priced(server, source, "budget.max_usd=0.1"))
    assert first.returncode == 4, first.stderr
    (line,) = [ln for ln in first.stderr.splitlines() if ln.startswith("budget reached")]
    assert "Traceback" not in first.stderr
    assert "spent $" in line and "of $0.1" in line and "remains" in line
    folder, stats = stats_of(tmp_path)
    assert stats["budget"]["reached"] and stats["budget"]["max_usd"] == 0.1
    assert stats["budget"]["reserved_usd"] == 0
    sent = server.stats()["requests"]
    assert stats["budget"]["spent_usd"] == pytest.approx(sent * GPT4O_REQUEST_USD)
    assert stats["records"] < 40  # only partitions whose every record was answered are committed
    command = shlex.split(line.split("resume with a higher budget: ", 1)[1])
    assert command[:3] == ["python", "-m", "recipe"] and "budget.max_usd=0.2" in command
    assert "budget.max_usd=0.1" not in command
    # no key in the command: it reads the key from the variable the note names (issue 21, item 3)
    assert "backend.api_key=${oc.env:OPENAI_API_KEY}" in command and "test-key" not in line
    assert "note: the API key is not repeated" in first.stderr and "export OPENAI_API_KEY first" in first.stderr
    # the budget covers the whole run: 40 requests at $0.0075 = $0.30 > $0.20, so this one stops too
    second = cli(tmp_path, *command[3:], env={"OPENAI_API_KEY": "test-key"})
    assert second.returncode == 4, second.stderr
    _, stats = stats_of(tmp_path)
    assert stats["budget"]["spent_before_usd"] == pytest.approx(sent * GPT4O_REQUEST_USD)
    assert stats["budget"]["spent_usd"] <= 0.2 + stats["budget"]["max_in_flight"] * GPT4O_REQUEST_USD
    third = cli(tmp_path, *priced(server, source, "budget.max_usd=1"))
    assert third.returncode == 0, third.stderr
    _, stats = stats_of(tmp_path)
    rows = outputs(folder)
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(40))
    assert server.stats()["requests"] == 40, "every record was paid for once over three attempts"
    assert stats["budget"]["spent_usd"] == pytest.approx(40 * GPT4O_REQUEST_USD)
    assert stats["budget"]["remaining_usd"] == pytest.approx(1 - 40 * GPT4O_REQUEST_USD)
    assert not stats["budget"]["reached"]


def test_budget_holds_on_an_existing_two_worker_scheduler_and_a_rerun_completes_every_record_once(
        stub_server, tmp_path, two_workers):
    """``dask.address=``: the budget's one ledger lives on a scheduler the run did not start, and
    both workers' requests are charged to it."""
    from distributed import Client

    server = stub_server(usage=(PROMPT, COMPLETION), latency=0.05)
    source = write_prompts(tmp_path / "in.jsonl", 120)
    overrides = priced(server, source, f"dask.address={two_workers}", "backend.max_concurrency=8")
    out = tmp_path / "out"
    first = recipe.run(recipe.compose(overrides + ["budget.max_usd=0.2"]), output_dir=str(out))
    budget = first.stats["budget"]
    sent = server.stats()["requests"]
    assert first.budget_reached and budget["reached"] and first.records < 120
    # every answer is charged, once, in the scheduler's one ledger
    assert budget["spent_usd"] == pytest.approx(sent * GPT4O_REQUEST_USD)
    # overshoot only by what the requests in flight when the cap was reached used beyond their reservation
    assert 0.2 - GPT4O_REQUEST_USD < budget["spent_usd"] <= 0.2 + budget["max_in_flight"] * GPT4O_REQUEST_USD
    assert budget["max_in_flight"] <= 8 and budget["reserved_usd"] == 0
    with Client(two_workers) as client:  # both workers asked, through the one ledger
        asked = client.run(lambda: __import__("recipe.clients.factory").clients.factory.process_stats().as_dict()["requests"])
    assert sum(asked.values()) == sent and len(asked) == 2
    second = recipe.run(recipe.compose(overrides + ["budget.max_usd=5"]), output_dir=str(out))
    assert not second.budget_reached and second.records == 120
    rows = outputs(out)
    assert len(rows) == 120 and len({r["_id"] for r in rows}) == 120
    assert server.stats()["requests"] == 120, "every record paid for once over both attempts"
    assert second.stats["budget"]["spent_usd"] == pytest.approx(120 * GPT4O_REQUEST_USD)


def test_max_usd_on_an_unpriced_model_is_refused_in_one_line(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 3)
    args = [a.replace("model.name=gpt-4o", "model.name=stub-model") for a in priced(server, source, "budget.max_usd=1")]
    result = cli(tmp_path, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # (litellm's import may add pydantic UserWarnings on a loaded machine: not ours to assert on)
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: budget.max_usd: model openai/stub-model has no known price; give one with "
        "model.price.input_per_mtok=USD and model.price.output_per_mtok=USD (per million tokens)"]
    assert server.stats()["requests"] == 0


def test_a_given_price_prices_a_local_model(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 6)
    args = [a.replace("model.name=gpt-4o", "model.name=stub-model") for a in priced(server, source)]
    summary = recipe.run(recipe.compose(args + ["budget.max_usd=1", "model.price.input_per_mtok=2",
                                                "model.price.output_per_mtok=10"]), output_dir=str(tmp_path / "o"))
    assert summary.records == 6 and not summary.budget_reached
    assert summary.stats["budget"]["spent_usd"] == pytest.approx(6 * (PROMPT * 2e-6 + COMPLETION * 10e-6))


def test_max_tokens_caps_any_model(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 30)
    args = [a.replace("model.name=gpt-4o", "model.name=stub-model") for a in priced(server, source)]
    summary = recipe.run(recipe.compose(args + ["budget.max_tokens=10000", "backend.max_concurrency=2"]),
                         output_dir=str(tmp_path / "o"))
    budget = summary.stats["budget"]
    assert summary.budget_reached
    assert budget["spent_tokens"] == server.stats()["requests"] * (PROMPT + COMPLETION)
    assert budget["spent_tokens"] <= 10000 + budget["max_in_flight"] * (PROMPT + COMPLETION)
    assert summary.records < 30


@pytest.mark.parametrize("override, message", [
    ("budget.max_usd=-1", "budget.max_usd=-1.0: must be > 0"),
    ("budget.max_tokens=0", "budget.max_tokens=0: must be >= 1"),
    ("model.price.input_per_mtok=1", "model.price: give both input_per_mtok and output_per_mtok"),
])
def test_bad_budget_values_are_refused(tmp_path, override, message):
    result = cli(tmp_path, override, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# ---- target.records ----------------------------------------------------------------------------

def halves_conf(tmp_path: Path) -> Path:
    from spend_helpers import HALVES_RECIPE

    conf = tmp_path / "conf"
    (conf / "recipe").mkdir(parents=True, exist_ok=True)
    (conf / "recipe" / "halves.yaml").write_text(HALVES_RECIPE)
    return conf


def test_filtered_and_deduplicated_count_each_record_once_over_a_stopped_attempt_and_its_rerun(stub_server, tmp_path):
    """The budget stops partitions part-way (not committed); their records were already filtered
    and deduplicated once. The rerun does them again: each dropped record still counts once."""
    from spend_helpers import DEDUP_RECIPE

    server = stub_server(usage=(PROMPT, COMPLETION))
    conf = halves_conf(tmp_path)
    (conf / "recipe" / "halves_dedup.yaml").write_text(DEDUP_RECIPE)
    source = tmp_path / "in.jsonl"  # question 0, 0, 2, 2, 4, 4 ... and every odd question once
    source.write_text("".join(json.dumps({"prompt": f"question {i - i % 4 if i % 4 < 2 else i}"}) + "\n"
                              for i in range(40)))
    overrides = priced(server, source, "recipe=halves_dedup", f"hydra.searchpath=[file://{conf}]",
                       "backend.max_concurrency=2")
    out = tmp_path / "out"
    first = recipe.run(recipe.compose(overrides + ["budget.max_usd=0.1"]), output_dir=str(out))
    assert first.budget_reached and first.stats["filtered"] < 20
    second = recipe.run(recipe.compose(overrides + ["budget.max_usd=5"]), output_dir=str(out))
    prompts = [json.loads(line)["prompt"] for line in source.read_text().splitlines()]
    odd = sum(1 for p in prompts if int(p.split()[-1]) % 2)
    kept = sorted({p for p in prompts if int(p.split()[-1]) % 2 == 0})
    assert second.records == len(kept) and sorted(r["prompt"] for r in outputs(out)) == kept
    assert second.stats["filtered"] == odd
    assert second.stats["deduplicated"] == {"dedup": 40 - odd - len(kept)}
    assert second.records + second.stats["filtered"] + second.stats["deduplicated"]["dedup"] == 40


def test_cli_exactly_n_after_a_half_filter_costs_a_few_hundred_requests(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 5000)
    args = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", f"input={source}", "recipe=halves", "target.records=137",
            f"hydra.searchpath=[file://{halves_conf(tmp_path)}]"]
    helpers = {"PYTHONPATH": os.pathsep.join((SRC, str(Path(__file__).resolve().parent)))}  # spend_helpers
    result = cli(tmp_path, *args, env=helpers)
    assert result.returncode == 0, result.stderr
    folder, stats = stats_of(tmp_path)
    rows = outputs(folder)
    # exactly N, the first N that pass the filter, in input order
    assert [r["prompt"] for r in rows] == [f"question {i}" for i in range(0, 274, 2)]
    assert stats["records"] == 137 and stats["target"]["output"] == 137 and stats["target"]["reached"]
    sent = server.stats()["requests"]
    assert 274 <= sent <= 400, f"{sent} requests for 137 records at a 50% filter over 5000 inputs"
    assert stats["target"]["acceptance_rate"] == 0.5
    assert stats["target"]["accepted"] == stats["target"]["rejected"] == sent // 2
    again = cli(tmp_path, *args, env=helpers)
    assert again.returncode == 0, again.stderr
    assert outputs(folder) == rows, "a rerun gives the same N records"
    assert server.stats()["requests"] == sent


def test_exactly_n_on_a_two_worker_cluster_and_a_larger_n_continues(stub_server, tmp_path, two_workers):
    import spend_helpers  # noqa: F401 - importable here and in the workers (pytest put tests/ on the path)

    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 600)
    base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", f"input={source}", "recipe=halves", f"hydra.searchpath=[file://{halves_conf(tmp_path)}]",
            f"dask.address={two_workers}"]
    out = tmp_path / "out"
    first = recipe.run(recipe.compose(base + ["target.records=50"]), output_dir=str(out))
    assert first.records == 50
    assert [r["prompt"] for r in outputs(out)] == [f"question {i}" for i in range(0, 100, 2)]
    second = recipe.run(recipe.compose(base + ["target.records=120"]), output_dir=str(out))
    assert second.records == 120
    assert [r["prompt"] for r in outputs(out)] == [f"question {i}" for i in range(0, 240, 2)]
    assert server.stats()["requests"] < 600
    short = recipe.run(recipe.compose(base + ["target.records=400"]), output_dir=str(out))
    assert short.records == 300 and not short.stats["target"]["reached"]
    assert short.notes == ["target.records not reached: 300 of 400 records: every input was used (75 partitions)"]  # the plan of attempt 1: 8 per partition


def test_a_recipe_that_makes_its_own_seeds_runs_rounds_with_shifted_seeds(stub_server, tmp_path):
    server = stub_server(reply="list")
    base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", "recipe=open_qa", "~recipe.stages.dedup_questions"]  # the stub's lists are near-duplicates
    out = tmp_path / "out"
    one_round = recipe.run(recipe.compose(base), output_dir=str(tmp_path / "plain"))
    per_round = one_round.records
    asked_once = len({json.dumps(b["messages"]) for b in server.stats()["bodies"]})  # distinct requests of a round
    server.reset()
    summary = recipe.run(recipe.compose(base + ["target.records=40", "target.max_rounds=5"]), output_dir=str(out))
    rows = outputs(out)
    assert summary.records == len(rows) == 40 and len({r["_id"] for r in rows}) == 40
    rounds = -(-40 // per_round)
    assert summary.stats["target"]["rounds"] == rounds
    assert {r.get("_round", 0) for r in rows} == set(range(rounds))
    # round 0 is the plain run (cached); later rounds are new requests with seeds shifted by the round
    bodies = server.stats()["bodies"]
    assert {b.get("seed") for b in bodies} == set(range(1, rounds))
    # each later round asks what a round asks (distinct requests: a concurrent identical ask may or
    # may not be answered from the cache, so raw counts vary by one or two)
    for number in range(1, rounds):
        assert len({json.dumps(b["messages"]) for b in bodies if b.get("seed") == number}) == asked_once, number
    short = recipe.run(recipe.compose(base + ["target.records=500", "target.max_rounds=3"]), output_dir=str(out))
    assert short.records == 3 * per_round
    assert short.notes == [f"target.records not reached: {3 * per_round} of 500 records: "
                           "target.max_rounds=3 rounds were run"]


# ---- backend.batch -----------------------------------------------------------------------------

GPT4O_BATCH_REQUEST_USD = PROMPT * 1.25e-6 + COMPLETION * 5e-6  # litellm's gpt-4o batch price


def batch_args(server, source: Path, *extra: str) -> list[str]:
    return priced(server, source, "backend.batch=true", "backend.batch_poll_seconds=0.2", *extra)


def test_batch_answers_like_online_at_the_batch_price_and_resubmits_failed_lines(stub_server, tmp_path):
    online_server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 30)
    sampling = ["sampling.seed=7", "sampling.n=2", "+recipe.stages.generate.n=2", "sampling.stop=[END]",
                "sampling.temperature=0.5"]
    online = recipe.run(recipe.compose(priced(online_server, source, "cache.enabled=false", *sampling)),
                        output_dir=str(tmp_path / "online"))
    server = stub_server(usage=(PROMPT, COMPLETION), fail_500=0.1, batch_seconds=0.5)
    summary = recipe.run(recipe.compose(batch_args(server, source, *sampling)), output_dir=str(tmp_path / "b"))
    assert summary.records == 30 and summary.failed == 0
    assert outputs(tmp_path / "b") == outputs(tmp_path / "online"), "the same answers as online, n and seeds included"
    assert all(len(r["response"]) == 2 for r in outputs(tmp_path / "b"))

    def sent(bodies: list[dict]) -> list[str]:
        return sorted(json.dumps({k: v for k, v in b.items() if k != "stream"}, sort_keys=True) for b in bodies)

    online_bodies = online_server.stats()["bodies"]
    assert len(online_bodies) == 30 and online_bodies[0]["stop"] == ["END"] and online_bodies[0]["n"] == 2
    assert set(sent(server.stats()["bodies"])) == set(sent(online_bodies))
    stub = server.stats()
    assert stub["by_path"].get("/v1/chat/completions", 0) == 0, "nothing went through the live route"
    # the failed lines (10%) were submitted again, in a new batch; answered lines never were
    assert stub["batches_created"] == summary.stats["batch"]["batches"] >= 2
    assert stub["batch_lines"] == 30 + summary.stats["batch"]["resubmitted_lines"]
    assert summary.stats["batch"]["resubmitted_lines"] >= 3
    assert summary.stats["cost_usd"] == pytest.approx(30 * GPT4O_BATCH_REQUEST_USD)
    assert online.stats["cost_usd"] == pytest.approx(2 * summary.stats["cost_usd"])
    recorded = sorted((tmp_path / "b" / "batches").glob("*.json"))
    assert len(recorded) == stub["batches_created"]
    assert {json.loads(p.read_text())["status"] for p in recorded} == {"completed"}


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_expired_batches_are_resubmitted_then_their_records_fail(stub_server, tmp_path, wire):
    server = stub_server(batch_seconds=0.2, batch_expire=True)
    source = write_prompts(tmp_path / "in.jsonl", 4)
    args = (batch_args if wire == "openai" else anthropic_batch_args)(server, source, "backend.num_retries=2")
    summary = recipe.run(recipe.compose(args), output_dir=str(tmp_path / "b"))
    assert summary.records == 0 and summary.failed == 4
    created = "batches_created" if wire == "openai" else "message_batches_created"
    assert server.stats()[created] == 3  # the first, and one per retry
    assert summary.stats["failed_by_class"] == {"ServerError": 4}
    assert server.stats()["requests"] == 0, "an expired request was never answered, so never paid"


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_cli_batch_killed_with_sigkill_is_resumed_without_submitting_again(stub_server, tmp_path, wire):
    import signal
    import time

    server = stub_server(usage=(PROMPT, COMPLETION), batch_seconds=6)
    source = write_prompts(tmp_path / "in.jsonl", 40)
    created_key = "batches_created" if wire == "openai" else "message_batches_created"

    def lines() -> int:
        stub = server.stats()
        return stub["batch_lines"] if wire == "openai" else len(stub["message_batch_params"])
    args = batch_args(server, source) if wire == "openai" else anthropic_batch_args(server, source)
    proc = cli_process(tmp_path, *args, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("*/batches/*.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its batch was created"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    created = server.stats()[created_key]
    assert created >= 1
    states = [json.loads(p.read_text())["status"] for p in (tmp_path / "runs").glob("*/batches/*.json")]
    assert "completed" not in states, "killed while its batches were running"
    proc.communicate()
    result = cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    folder, stats = stats_of(tmp_path)
    assert server.stats()[created_key] == created, "no batch was submitted again"
    assert stats["batch"]["polled_batches"] == created and stats["batch"].get("batches", 0) == 0
    rows = outputs(folder)
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(40))
    assert lines() == 40


def test_progress_bar_shows_batch_states(stub_server, tmp_path, capsys):
    server = stub_server(batch_seconds=4)
    source = write_prompts(tmp_path / "in.jsonl", 5)
    args = [a for a in batch_args(server, source) if a != "progress=false"] + ["progress=true"]
    summary = recipe.run(recipe.compose(args), output_dir=str(tmp_path / "b"))
    assert summary.records == 5
    err = capsys.readouterr().err
    import re

    shown = set(re.findall(r"batches=(\w+):1", err))
    assert {"validating", "in_progress", "finalizing"} & shown and "completed" in shown, err[-500:]


# ---- budget and target together: whichever comes first ends the run -----------------------------

def test_budget_and_target_together_stop_at_whichever_comes_first(stub_server, tmp_path):
    import spend_helpers  # noqa: F401 - the filter's module (pytest put tests/ on the path)

    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 200)
    base = priced(server, source, "recipe=halves", f"hydra.searchpath=[file://{halves_conf(tmp_path)}]",
                  "backend.max_concurrency=1")
    # the target first: 12 records at a 50% filter need 24 answered inputs, far under a $10 budget
    first = recipe.run(recipe.compose(base + ["target.records=12", "budget.max_usd=10"]),
                       output_dir=str(tmp_path / "target_first"))
    assert first.records == 12 and first.stats["target"]["reached"] and not first.budget_reached
    assert [r["prompt"] for r in outputs(tmp_path / "target_first")] == [f"question {i}" for i in range(0, 24, 2)]
    sent = server.stats()["requests"]
    assert first.stats["target"]["accepted"] + first.stats["target"]["rejected"] == sent
    assert first.stats["budget"]["spent_usd"] == pytest.approx(sent * GPT4O_REQUEST_USD)
    assert sent < 200
    # the budget first: $0.05 pays for exactly 6 requests (one in flight at a time): far short of 40 records,
    # and short of one whole partition (a target of 40 cuts the input into partitions of 8)
    server.reset()
    second = recipe.run(recipe.compose(base + ["target.records=40", "budget.max_usd=0.05",
                                               f"cache.dir={tmp_path / 'cold'}"]),  # no answer from the first run
                        output_dir=str(tmp_path / "budget_first"))
    assert second.budget_reached and not second.stats["target"]["reached"]
    assert server.stats()["requests"] == 6
    assert second.stats["budget"]["spent_usd"] == pytest.approx(6 * GPT4O_REQUEST_USD)
    assert second.records == 0, "no partition (8 inputs) was answered whole: nothing committed"
    assert second.notes == ["target.records not reached: 0 of 40 records: the budget was reached"]


def test_exactly_n_through_a_whole_bag_dedup_reads_only_a_prefix_of_the_input(stub_server, tmp_path):
    import spend_helpers

    server = stub_server()
    conf = halves_conf(tmp_path)
    (conf / "recipe" / "halves_dedup.yaml").write_text(spend_helpers.DEDUP_RECIPE)
    source = tmp_path / "in.jsonl"  # every even question twice in a row: the dedup keeps the first of each pair
    source.write_text("".join(json.dumps({"prompt": f"question {i - i % 2}"}) + "\n" for i in range(2000)))
    base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", f"input={source}", "recipe=halves_dedup", f"hydra.searchpath=[file://{conf}]"]
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(base + ["target.records=30"]), output_dir=str(out))
    rows = outputs(out)
    assert [r["prompt"] for r in rows] == [f"question {i}" for i in range(0, 60, 2)]
    assert summary.records == 30 and summary.stats["target"]["reached"]
    # 60 inputs hold the 30 records; a wave overshoots by little, and a pair's twin is a cache hit
    assert server.stats()["requests"] < 200, f"{server.stats()['requests']} requests: the dedup pulled in all 2000 inputs"
    assert summary.stats["deduplicated"] == {"dedup": summary.stats["target"]["rejected"]}


# ---- Anthropic's Message Batches API -------------------------------------------------------------

CLAUDE = "claude-haiku-4-5"  # litellm's price: $1 / $5 per million tokens online, half of that in batches
CLAUDE_BATCH_REQUEST_USD = PROMPT * 0.5e-6 + COMPLETION * 2.5e-6


def anthropic_batch_args(server, source: Path, *extra: str) -> list[str]:
    return ["backend=openai", "backend.provider=anthropic", f"backend.api_base={server.base_url}",
            "backend.api_key=sk-ant-stub", f"model.name={CLAUDE}", "progress=false", f"input={source}",
            "sampling.max_tokens=500", "sampling.temperature=0.5", "sampling.top_p=0.9",
            "dask.partition_size=10", "backend.batch=true", "backend.batch_poll_seconds=0.2", *extra]


def test_anthropic_message_batches_answer_exactly_at_the_batch_price(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION), fail_500=0.1, batch_seconds=0.3, api_key="sk-ant-stub")
    source = write_prompts(tmp_path / "in.jsonl", 20)
    summary = recipe.run(recipe.compose(anthropic_batch_args(server, source)), output_dir=str(tmp_path / "b"))
    assert summary.records == 20 and summary.failed == 0
    rows = outputs(tmp_path / "b")
    assert sorted((r["prompt"], r["response"]) for r in rows) == sorted(
        (f"question {i}", f"echo: question {i}") for i in range(20))
    stub = server.stats()
    # Anthropic's wire: inline Messages params per custom_id, nothing through a live or OpenAI route
    expected = [{"model": CLAUDE, "max_tokens": 500, "temperature": 0.5, "top_p": 0.9,
                 "messages": [{"role": "user", "content": [{"type": "text", "text": f"question {i}"}]}]}
                for i in range(20)]
    params = stub["message_batch_params"]
    assert sorted({json.dumps(p, sort_keys=True) for p in params}) == sorted(json.dumps(e, sort_keys=True) for e in expected)
    assert {k: v for k, v in stub["by_path"].items() if not k.startswith(("/v1/messages/batches", "batch:"))} == {}
    # the failed lines (10%) went again in a new batch; answered lines never did
    resubmitted = summary.stats["batch"]["resubmitted_lines"]
    assert resubmitted == 2 and summary.stats["batch"]["lines"] == 20 + resubmitted
    assert stub["message_batches_created"] == summary.stats["batch"]["batches"] >= 2
    assert len(stub["message_batch_params"]) == 20 + resubmitted
    assert stub["by_path"]["batch:/v1/messages"] == 20 + resubmitted
    assert summary.stats["cost_usd"] == pytest.approx(20 * CLAUDE_BATCH_REQUEST_USD)
    recorded = sorted((tmp_path / "b" / "batches").glob("*.json"))
    assert len(recorded) == stub["message_batches_created"]
    assert all(json.loads(p.read_text())["id"].startswith("msgbatch_") for p in recorded)


def test_anthropic_batch_refuses_n_as_online_in_one_error_per_record(stub_server, tmp_path):
    server = stub_server(batch_seconds=0.2)
    source = write_prompts(tmp_path / "in.jsonl", 3)
    summary = recipe.run(recipe.compose(anthropic_batch_args(server, source, "+recipe.stages.generate.n=2",
                                                             "backend.num_retries=0")),
                         output_dir=str(tmp_path / "b"))
    assert summary.records == 0 and summary.stats["failed_by_class"] == {"UnsupportedParamError": 3}
    assert server.stats()["message_batches_created"] == 0


def test_anthropic_batch_structured_output_is_valid_json_of_the_schema(stub_server, tmp_path):
    server = stub_server(batch_seconds=0.2)
    source = write_prompts(tmp_path / "in.jsonl", 3)
    schema = "{type:object,properties:{answer:{type:string}},required:[answer]}"
    # the OpenAI form (response_format json_schema), which litellm turns into Anthropic's output_format
    summary = recipe.run(recipe.compose(anthropic_batch_args(server, source, f"+recipe.stages.generate.schema={schema}",
                                                             "backend.structured_output=openai")),
                         output_dir=str(tmp_path / "b"))
    assert summary.records == 3 and summary.failed == 0
    # the stub answers {"answer": "answer about <prompt>"} under the schema it was given as output_format
    assert sorted((r["prompt"], r["response"]) for r in outputs(tmp_path / "b")) == [
        (f"question {i}", {"answer": f"answer about question {i}"}) for i in range(3)]
    params = server.stats()["message_batch_params"]
    assert all(p["output_format"]["type"] == "json_schema" and "json_mode" not in p for p in params)


def test_seed_rounds_are_deduplicated_against_the_earlier_rounds(stub_server, tmp_path):
    # Under a schema the stub's lists ignore the seed, so every later round repeats round 0 word for
    # word: the whole-bag dedup must remove all of it, and the target cannot be reached.
    server = stub_server()
    base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", "recipe=open_qa", "recipe.stages.dedup_questions.method=exact"]
    one_round = recipe.run(recipe.compose(base), output_dir=str(tmp_path / "plain"))
    per_round = one_round.records
    assert per_round > 0
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(base + [f"target.records={2 * per_round + 1}", "target.max_rounds=3"]),
                         output_dir=str(out))
    rows = outputs(out)
    assert summary.records == len(rows) == per_round
    assert {r.get("_round", 0) for r in rows} == {0}
    assert len({r["question"] for r in rows}) == per_round
    assert summary.notes == [f"target.records not reached: {per_round} of {2 * per_round + 1} records: "
                             "target.max_rounds=3 rounds were run"]
