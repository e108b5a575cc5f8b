"""Dask bag stages: real llama.cpp, real Dask (threads and a 2-process LocalCluster), real faults."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import dask.bag as db
import pytest
from dask.base import tokenize

import recipe
from recipe.clients.factory import ClientSpec
from recipe.stages import ExplodeStage, FilterStage, GenerateStage, ParseListStage, ReadStage, WriteStage
from recipe.stages.records import ID, PARENT

from conftest import error_rows, outputs


def stub_spec(server, **changes) -> ClientSpec:
    base = dict(provider="openai", model="stub-model", api_base=server.base_url, api_key="test-key",
                timeout=10, num_retries=8, max_concurrency=16, sampling=(("max_tokens", 16),))
    base.update(changes)
    return ClientSpec(**base)


def three_stage_pipeline(spec: ClientSpec, topics: list[str]) -> db.Bag:
    bag = db.from_sequence([{"topic": t} for t in topics], npartitions=2)
    bag = GenerateStage(client=spec, prompt="List three short questions about {{ topic }}, as a numbered list.",
                        output_field="questions", sampling={"max_tokens": 48, "temperature": 0.0})(bag)
    bag = ParseListStage(client=spec, input_field="questions", n=3)(bag)
    return ExplodeStage(field="questions", output_field="question")(bag)


def check_lineage(rows: list[dict], n_inputs: int) -> None:
    parents = {r[PARENT] for r in rows if "_error" not in r}
    assert len(parents) <= n_inputs
    assert all(r[ID] and r[ID] != r[PARENT] for r in rows if "_error" not in r)
    assert len({r[ID] for r in rows}) == len(rows), "ids must be unique"


@pytest.mark.llm
def test_three_stages_threaded_on_llama(llama_server):
    spec = ClientSpec(provider="openai", model="smollm2", api_base=llama_server.base_url, api_key="none", max_concurrency=4,
                      on_truncated="keep")  # lists cut at 48 tokens still parse
    rows = three_stage_pipeline(spec, ["volcanoes", "chess"]).compute(scheduler="threads")
    good = [r for r in rows if "_error" not in r]
    assert good, rows
    assert all(isinstance(r["question"], str) and r["question"] for r in good)
    assert {r["topic"] for r in rows if "_error" not in r} <= {"volcanoes", "chess"}
    check_lineage(rows, 2)


@pytest.mark.llm
def test_three_stages_on_local_cluster_with_two_processes(llama_server):
    from distributed import Client, LocalCluster

    spec = ClientSpec(provider="openai", model="smollm2", api_base=llama_server.base_url, api_key="none", max_concurrency=4,
                      on_truncated="keep")  # lists cut at 48 tokens still parse
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        rows = client.compute(three_stage_pipeline(spec, ["rivers", "bread"])).result()
        pids = set(client.run(lambda: __import__("os").getpid()).values())
    assert len(pids) == 2
    good = [r for r in rows if "_error" not in r]
    assert good and all(r["question"] for r in good)
    check_lineage(rows, 2)


def test_faults_every_record_accounted_once_and_retries_succeed(stub_server, tmp_path):
    server = stub_server(latency=0.01, fail_500=0.04, fail_429=0.03, retry_after=0.05, drop=0.02, malformed=0.02)
    records = [{"prompt": f"question {i}"} for i in range(300)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    cfg = recipe.compose([f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=test-key", "model.name=stub-model", "backend.num_retries=8",
                          "cache.enabled=false", "progress=false", "dask.partition_size=40"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    rows = outputs(tmp_path / "out")
    errors = error_rows(tmp_path / "out")
    prompts = [r["prompt"] for r in rows] + [e["record"]["prompt"] for e in errors]
    assert sorted(prompts) == sorted(r["prompt"] for r in records), "each record exactly once, in output or errors"
    assert len(rows) / len(records) > 0.99
    assert all(r["response"].startswith("echo: question") for r in rows)
    counts = server.stats()["status_counts"]
    assert counts.get("500", 0) and counts.get("429", 0) and counts.get("drop", 0), counts
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["retries"] >= counts["500"] + counts["429"] + counts["drop"]
    assert stats["rate_limited_429"] == counts["429"]
    assert summary.failed == len(errors)


def test_failing_requests_become_error_records_and_the_run_goes_on(stub_server, tmp_path):
    server = stub_server(fail_500=0.5)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(20)) + "\n")
    cfg = recipe.compose([f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=k", "model.name=m", "backend.num_retries=0", "cache.enabled=false",
                          "progress=false"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    errors = error_rows(tmp_path / "out")
    assert summary.records == 10 and summary.failed == 10 == len(errors)
    assert {e["_error"]["class"] for e in errors} == {"ServerError"}
    assert all(e["_error"]["stage"] == "generate" and e["record"]["prompt"].startswith("p") for e in errors)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["failed_by_class"] == {"ServerError": 10}


def test_rolling_concurrency_is_held_not_sliced(stub_server):
    """Requests keep the limit busy: the server sees max_concurrency at once, never more."""
    server = stub_server(latency=0.2, jitter_sigma=0.8)
    spec = stub_spec(server, max_concurrency=8)
    bag = db.from_sequence([{"prompt": f"p{i}"} for i in range(64)], npartitions=4)
    rows = GenerateStage(client=spec)(bag).compute(scheduler="threads")
    assert len(rows) == 64 and all("response" in r for r in rows)
    assert server.stats()["max_in_flight"] == 8


def test_stages_work_inside_a_running_event_loop(stub_server):
    """As in Jupyter: compute() is called from a thread whose loop is running."""
    server = stub_server()
    spec = stub_spec(server)

    async def notebook_cell():
        bag = db.from_sequence([{"prompt": "a"}, {"prompt": "b"}], npartitions=1)
        return GenerateStage(client=spec)(bag).compute(scheduler="threads")

    rows = asyncio.run(notebook_cell())
    assert [r["response"] for r in rows] == ["echo: a", "echo: b"]


def test_sync_client_inside_a_running_event_loop(stub_server):
    server = stub_server()

    async def cell():
        client = recipe.build_client({"backend": {"provider": "openai", "api_base": server.base_url, "api_key": "k"},
                                      "model": {"name": "m"}, "cache": {"enabled": False}})
        return client.query_model(messages=[{"role": "user", "content": "hi"}], model="m")

    assert asyncio.run(cell()) == ["echo: hi"]


def test_stages_are_picklable_with_deterministic_tokens(stub_server):
    spec = ClientSpec(provider="openai", model="m", api_base="http://127.0.0.1:1/v1", api_key="sk-secret-123")
    a = GenerateStage(client=spec, prompt="{{ x }}", name="g")
    b = GenerateStage(client=spec, prompt="{{ x }}", name="g")
    assert tokenize(a) == tokenize(b)
    assert tokenize(a) != tokenize(GenerateStage(client=spec, prompt="{{ y }}", name="g"))
    assert pickle.loads(pickle.dumps(a)).prompt == "{{ x }}"
    assert "sk-secret-123" not in repr(spec)
    graph_names = list(GenerateStage(client=spec, name="questions")(db.from_sequence([{}])).dask.layers)
    assert any(name.startswith("questions") for name in graph_names)


def test_a_client_is_never_pickled(stub_server):
    client = recipe.build_client({"backend": {"provider": "openai", "api_base": "http://127.0.0.1:1/v1"},
                                  "model": {"name": "m"}, "cache": {"enabled": False}}, asynchronous=True)
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(client)


def test_filter_explode_and_read_write_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"word": w, "items": [w, w.upper()]} for w in ["a", "bb", "ccc"]]),
                   tmp_path / "in.parquet")
    bag = ReadStage(path=str(tmp_path / "in.parquet"))()
    bag = FilterStage(predicate=lambda r: len(r["word"]) > 1)(bag)
    bag = ExplodeStage(field="items", output_field="item")(bag)
    summary = WriteStage(path=str(tmp_path / "out"), format="parquet")(bag).compute(scheduler="sync")
    rows = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    assert sorted(r["item"] for r in rows) == ["BB", "CCC", "bb", "ccc"]
    assert sum(s["records"] for s in summary) == 4
    assert len({r["_parent"] for r in rows}) == 2


def test_stats_json_reports_requests_tokens_and_throughput(stub_server, tmp_path):
    server = stub_server()
    cfg = recipe.compose(["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                          "model.name=m", "cache.enabled=false", "progress=false"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    sample = Path(recipe.config.paths.sample_path("prompts.jsonl")).read_text().splitlines()
    assert summary.records == stats["records"] == stats["requests"] == len(sample)
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    assert stats["wall_seconds"] > 0 and stats["records_per_second"] > 0
    for key in ("retries", "failed_by_class", "rate_limited_429", "retry_wait_seconds", "limit_wait_seconds", "cost_usd"):
        assert key in stats


def test_runs_on_an_existing_scheduler(stub_server, tmp_path):
    from distributed import LocalCluster

    server = stub_server()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        cfg = recipe.compose(["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                              "model.name=m", "cache.enabled=false", "progress=false",
                              f"dask.address={cluster.scheduler_address}"])
        summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
        assert cluster.scheduler.plugins.get("recipe-limits") is not None
    assert summary.records == summary.stats["requests"] > 0


def test_dask_partition_size_reaches_the_read_stage(stub_server, tmp_path):
    server = stub_server()
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))
    cfg = recipe.compose([f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=k", "model.name=m", "cache.enabled=false", "progress=false",
                          "dask.partition_size=3"])
    recipe.run(cfg, output_dir=str(tmp_path / "out"))
    sizes = [len(p.read_text().splitlines()) for p in sorted((tmp_path / "out").glob("part-*.jsonl"))]
    assert sizes == [3, 3, 3, 1]


# --- each stage's own behaviour on the stub server (exact content: the stub echoes the last user turn)

def run_stage(stage, records: list[dict]) -> list[dict]:
    return stage(db.from_sequence(records, npartitions=1)).compute(scheduler="sync")


def test_dialogue_stage_on_the_stub_exact_turns(stub_server):
    from recipe.stages import DialogueStage

    server = stub_server()
    stage = DialogueStage(client=stub_spec(server), n_user_turns=2, user_turn_prompt="Follow up {{ style }}: {{ history }}",
                          styles={"concise": "briefly"})
    [out] = run_stage(stage, [{ID: "r", PARENT: None, "openline": "Hi", "style": "concise"}])
    follow_up = "echo: Follow up briefly: User: Hi\n\nAssistant: echo: Hi"
    assert out["conversation"] == [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "echo: Hi"},
                                   {"role": "user", "content": follow_up},
                                   {"role": "assistant", "content": f"echo: {follow_up}"}]
    assert out["style"] == "concise" and out[ID] == "r"
    bodies = server.stats()["bodies"]
    assert len(bodies) == 3
    assert bodies[1]["messages"] == [{"role": "user", "content": "Follow up briefly: User: Hi\n\nAssistant: echo: Hi"}]
    assert [m["role"] for m in bodies[2]["messages"]] == ["user", "assistant", "user"]
    server.reset()
    two = DialogueStage(client=stub_spec(server), n_user_turns=1, end_with_user=True, user_turn_prompt="Next: {{ history }}")
    [out] = run_stage(two, [{ID: "s", PARENT: None, "openline": "Yo"}])
    assert [t["role"] for t in out["conversation"]] == ["user", "assistant", "user"]
    assert out["conversation"][2]["content"] == "echo: Next: User: Yo\n\nAssistant: echo: Yo"
    assert server.stats()["requests"] == 2


def test_generate_stage_messages_and_system_reach_the_wire(stub_server):
    server = stub_server()
    stage = GenerateStage(client=stub_spec(server), system="You are {{ persona }}.", output_field="answer",
                          messages=[{"role": "user", "content": "Q: {{ q }}"}, {"role": "assistant", "content": "A: ok"},
                                    {"role": "user", "content": "More on {{ q }}"}])
    [out] = run_stage(stage, [{ID: "r", PARENT: None, "q": "owls", "persona": "terse"}])
    assert out["answer"] == "echo: More on owls"
    [body] = server.stats()["bodies"]
    assert body["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Q: owls"},
                                {"role": "assistant", "content": "A: ok"}, {"role": "user", "content": "More on owls"}]
    assert stage.inputs == {"persona", "q"} and stage.outputs == {"answer"}


def test_parse_list_yaml_mode_end_to_end(stub_server):
    server = stub_server()
    text = "Some ideas:\n- alpha\n- beta"
    stage = ParseListStage(client=stub_spec(server), mode="yaml", input_field="response", output_field="items",
                           conversion_prompt="```yaml\n- alpha\n- beta\n```")
    [out] = run_stage(stage, [{ID: "r", PARENT: None, "response": text}])
    assert out["items"] == ["alpha", "beta"] and out["response"] == text
    [body] = server.stats()["bodies"]
    assert body["messages"][0]["content"] == "```yaml\n- alpha\n- beta\n```"
    # the converter's answer holds an item the original does not: NeMo Curator's hallucination check
    invented = ParseListStage(client=stub_spec(server), mode="yaml", conversion_prompt="```yaml\n- alpha\n- gamma\n```")
    [bad] = run_stage(invented, [{ID: "r", PARENT: None, "response": text}])
    assert bad["_error"]["class"] == "ParseError" and "gamma" in bad["_error"]["message"]


def test_filter_stage_keep_undecided(stub_server):
    from recipe.stages import progress

    server = stub_server()  # echoes: "echo: ..." is neither yes nor no
    records = [{ID: f"r{i}", PARENT: None, "q": f"is {i} odd?"} for i in range(3)]
    keep = FilterStage(client=stub_spec(server), prompt="{{ q }}", structured=False, keep_undecided=True,
                       verdict_field="verdict")
    kept = run_stage(keep, records)
    assert [(r[ID], r["verdict"]) for r in kept] == [(f"r{i}", f"echo: is {i} odd?") for i in range(3)]
    progress.reset()
    drop = FilterStage(client=stub_spec(server), prompt="{{ q }}", structured=False, keep_undecided=False)
    assert run_stage(drop, records) == []
    assert progress.snapshot()["filtered"] == 3
    assert server.stats()["requests"] == 6


def test_explode_index_field():
    from recipe.stages.records import make_id

    stage = ExplodeStage(field="items", output_field="item", index_field="position")
    out = stage.process_partition([{ID: "p", PARENT: None, "items": ["a", "b", "c"], "keep": 1}])
    assert [(r["item"], r["position"], r[ID], r[PARENT]) for r in out] == [
        ("a", 0, make_id("p", 0), "p"), ("b", 1, make_id("p", 1), "p"), ("c", 2, make_id("p", 2), "p")]
    assert all(r["keep"] == 1 and r["items"] == ["a", "b", "c"] for r in out)
    assert "position" not in ExplodeStage(field="items").process_partition([{ID: "p", "items": ["a"]}])[0]


def test_every_bad_parameter_of_a_stage_is_reported_at_once():
    from recipe.errors import ConfigError, StageParamsError
    from recipe.stages import DedupStage

    with pytest.raises(StageParamsError) as info:
        DedupStage(name="dups", method="fuzzy", threshold=1.5, ngram=0, num_perm=64)
    error = info.value
    assert isinstance(error, ConfigError) and error.stage == "dups"
    assert [p for p, _ in error.problems] == ["method", "threshold", "ngram"]
    assert str(error) == ("stage 'dups': method must be exact or minhash, not 'fuzzy'; threshold must be <= 1.0, "
                          "not 1.5; ngram must be >= 1, not 0")
    again = pickle.loads(pickle.dumps(error))  # it crosses Dask's process boundaries like every error
    assert again.problems == error.problems and str(again) == str(error)
    with pytest.raises(StageParamsError) as info:  # a rule tying parameters together, beside a type
        FilterStage(schema_retries=-1)
    assert [p for p, _ in info.value.problems] == ["schema_retries", "prompt"]
    assert DedupStage(threshold="0.5", ngram="3").threshold == 0.5  # values are coerced to their types


@pytest.mark.parametrize("name,turns", [("dialogue", ["user", "assistant", "user", "assistant"]),
                                        ("two_turn", ["user", "assistant", "user"])])
def test_dialogue_recipes_on_the_stub(stub_server, tmp_path, name, turns):
    """Both recipes run the one DialogueStage with dialogue.yaml's styles and user-turn template."""
    server = stub_server()
    cfg = recipe.compose([f"recipe={name}", "backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                          "model.name=m", "cache.enabled=false", "progress=false"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    rows = outputs(tmp_path / "out")
    openlines = [json.loads(line)["openline"] for line in
                 Path(recipe.config.paths.sample_path("openlines.jsonl")).read_text().splitlines()]
    assert summary.records == len(rows) == 3 * len(openlines) and summary.failed == 0
    assert sorted((r["openline"], r["style"]) for r in rows) == sorted(
        (o, s) for o in openlines for s in ("normal", "complex", "concise"))
    for row in rows:
        conversation = row["conversation"]
        assert [t["role"] for t in conversation] == turns
        assert conversation[0]["content"] == row["openline"]
        assert conversation[1]["content"] == f"echo: {row['openline']}"
        style = {"normal": "", "complex": " that is detailed and demanding, in the tone of an expert user",
                 "concise": " that is short and to the point"}[row["style"]]
        assert conversation[2]["content"] == (
            f"echo: Here is a conversation between a user and an AI assistant.\n\nUser: {row['openline']}\n\n"
            f"Assistant: echo: {row['openline']}\n\nWrite the user's next message: a follow-up request or "
            f"question{style}. Reply with the message only, without any preamble.")
    assert server.stats()["requests"] == len(rows) * (len(turns) - 1)
