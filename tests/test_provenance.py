"""``provenance: true`` on the stub: each record's ``_provenance`` says, per model stage that answered
it, the model and the sampling values the request carried (compared here with the request bodies
the stub received), and whether the cache answered. Off (the default), no field. The cache is the
same with it on or off; toggling it is another run, never mixed into one folder."""

from __future__ import annotations

from pathlib import Path

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl, write_prompts
from test_sample import write_recipe

N = 30
DRAWN = ["sampling.temperature={uniform:[0.5,1.0]}", "sampling.top_p={values:[0.8,0.95],weights:[1,3]}",
         "sampling.max_tokens=48", "sampling.seed=5"]
ENTRY_KEYS = {"model", "temperature", "top_p", "max_tokens", "seed", "cached", "requests"}


def _run(tmp_path: Path, server, out: str | None, *extra: str, check_exit: int | None = 0):
    write_prompts(tmp_path / "in.jsonl", N)
    where = [f"output_dir={tmp_path / out}"] if out else []
    return cli(tmp_path, "recipe=generate", f"input={tmp_path / 'in.jsonl'}", *where, *stub_overrides(server),
               "dask.partition_size=7", *DRAWN, *extra, check_exit=check_exit)


def _sent(server) -> dict[str, dict]:
    """The request body the stub received per prompt (the last user turn)."""
    return {b["messages"][-1]["content"]: b for b in server.stats()["bodies"]}


def _assert_entry_is_the_wire(entry: dict, body: dict, cached: bool) -> None:
    assert set(entry) == ENTRY_KEYS, entry
    for key in ("model", "temperature", "top_p", "max_tokens", "seed"):
        assert entry[key] == body[key], (key, entry, body)
    assert entry["cached"] is cached and entry["requests"] == 1


def test_each_record_says_the_drawn_values_it_was_sent_with(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, "on", "provenance=true")
    records, sent = outputs(tmp_path / "on"), _sent(server)
    assert len(records) == N and server.stats()["requests"] == N and len(sent) == N
    for record in records:
        assert set(record["_provenance"]) == {"generate"}
        _assert_entry_is_the_wire(record["_provenance"]["generate"], sent[record["prompt"]], cached=False)
    temperatures = {r["_provenance"]["generate"]["temperature"] for r in records}
    assert len(temperatures) > N // 2  # drawn per record, not one value for the run
    text = "".join(p.read_text() for p in (tmp_path / "on").glob("part-*.jsonl"))
    assert "test-key" not in text and "api_base" not in text and server.base_url not in text  # no secret, no endpoint


def test_on_a_two_worker_cluster_each_record_says_what_it_was_sent(tmp_path, stub_server, two_workers):
    server = stub_server()
    _run(tmp_path, server, "on", "provenance=true", f"dask.address={two_workers}")
    records, sent = outputs(tmp_path / "on"), _sent(server)
    assert len(records) == N and server.stats()["requests"] == N
    for record in records:
        _assert_entry_is_the_wire(record["_provenance"]["generate"], sent[record["prompt"]], cached=False)


def test_off_by_default_no_field_and_the_same_cache_both_ways(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, "off")
    off, sent = outputs(tmp_path / "off"), _sent(server)
    assert len(off) == N and all("_provenance" not in r for r in off)
    assert server.stats()["requests"] == N
    # on: every answer from the cache the run without provenance filled, no request
    _run(tmp_path, server, "on", "provenance=true")
    on = outputs(tmp_path / "on")
    assert server.stats()["requests"] == N
    assert {r["prompt"]: r["response"] for r in on} == {r["prompt"]: r["response"] for r in off}
    for record in on:
        _assert_entry_is_the_wire(record["_provenance"]["generate"], sent[record["prompt"]], cached=True)
    # and off again, after a run with it on: still the cache, still no field
    _run(tmp_path, server, "off-again")
    assert server.stats()["requests"] == N
    assert all("_provenance" not in r for r in outputs(tmp_path / "off-again"))


def test_toggling_provenance_is_another_run_never_mixed_into_one_folder(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, "out", "provenance=true")
    before = outputs(tmp_path / "out")
    result = _run(tmp_path, server, "out", check_exit=2)  # the same folder, provenance off
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "different config" in lines[0], lines
    assert outputs(tmp_path / "out") == before
    # without output_dir each gets its own run folder, whole: every record with the field, or none
    _run(tmp_path, server, None)
    _run(tmp_path, server, None, "provenance=true")
    folders = sorted((tmp_path / "runs").glob("generate-*"))
    assert len(folders) == 2
    kinds = sorted(sorted({"_provenance" in r for r in outputs(f)}) for f in folders)  # a folder's records: one kind
    assert kinds == [[False], [True]]
    assert server.stats()["requests"] == N  # every later run answered by the cache


def test_a_bad_value_is_one_error_line(tmp_path, stub_server):
    server = stub_server()
    result = _run(tmp_path, server, "bad", "provenance=maybe", check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "provenance" in lines[0], lines
    assert "'maybe' is not a valid bool" in lines[0]  # what is wrong, not only where
    assert "Traceback" not in result.stderr and server.stats()["requests"] == 0


def _two_stages(tmp_path: Path, server, out: str, write: dict) -> list[dict]:
    write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}", "n": i} for i in range(12)])
    conf = write_recipe(tmp_path, {
        "read": {"_target_": "recipe.stages.ReadStage", "path": str(tmp_path / "in.jsonl")},
        "answer": {"_target_": "recipe.stages.GenerateStage", "prompt": "{{ question }}", "output_field": "answer",
                   "sampling": {"temperature": {"uniform": [0.2, 0.9]}}},
        "judge": {"_target_": "recipe.stages.GenerateStage", "prompt": "judge {{ answer }}", "output_field": "verdict",
                  "when": "n % 3 == 0"},
        "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl", **write}})
    cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / out}",
        *stub_overrides(server), "provenance=true", "sampling.temperature=0.1", check_exit=0)
    return outputs(tmp_path / out)


def test_an_entry_per_stage_that_asked_kept_by_shape_and_dropped_by_fields(tmp_path, stub_server):
    server = stub_server()
    shape = {"messages": [{"role": "user", "content": "{{ question }}"},
                          {"role": "assistant", "content": "{{ answer }}"}]}
    records = _two_stages(tmp_path, server, "shaped", {"shape": shape})
    sent = _sent(server)
    assert len(records) == 12
    for record in records:
        assert set(record) == {"messages", "_id", "_parent", "_provenance"}  # kept like _id and _parent
        question, answer = (m["content"] for m in record["messages"])
        entries = record["_provenance"]
        asked_judge = f"judge {answer}" in sent
        assert set(entries) == ({"answer", "judge"} if asked_judge else {"answer"})  # a skipped stage: no entry
        assert entries["answer"]["temperature"] == sent[question]["temperature"]  # the stage's own distribution
        if asked_judge:
            assert entries["judge"]["temperature"] == sent[f"judge {answer}"]["temperature"] == 0.1
    assert sum("judge" in r["_provenance"] for r in records) == 4  # n = 0, 3, 6, 9
    requests = server.stats()["requests"]
    kept = _two_stages(tmp_path, server, "fields", {"fields": {"keep": ["question", "verdict"], "drop": ["_provenance"]}})
    assert all(set(r) == {"question", "verdict", "_id", "_parent"} for r in kept)
    assert server.stats()["requests"] == requests  # the same requests: from the cache


def test_the_report_profiles_the_provenance_fields(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, "on", "provenance=true")
    temperatures = [r["_provenance"]["generate"]["temperature"] for r in outputs(tmp_path / "on")]
    page = (tmp_path / "on" / "report.html").read_text()
    card = page.split("<h3>_provenance.generate.temperature</h3>", 1)[1].split("<div class=field", 1)[0]
    assert "<th>present</th><td>30</td>" in card
    assert f"<th>min / mean / max</th><td>{min(temperatures):g} / " in card and f" / {max(temperatures):g}</td>" in card
    assert "<h3>_provenance.generate.cached</h3>" in page


def test_a_stage_that_asks_several_times_counts_its_requests(tmp_path, stub_server):
    server = stub_server()
    args = ["recipe=dialogue", "recipe.user_styles=[concise]", *stub_overrides(server), "provenance=true"]
    cli(tmp_path, *args, f"output_dir={tmp_path / 'a'}", check_exit=0)
    records, sent = outputs(tmp_path / "a"), server.stats()["requests"]
    assert records and sum(r["_provenance"]["dialogue"]["requests"] for r in records) == sent
    assert {r["_provenance"]["dialogue"]["requests"] for r in records} == {3}  # assistant, user, assistant
    assert not any(r["_provenance"]["dialogue"]["cached"] for r in records)
    cli(tmp_path, *args, f"output_dir={tmp_path / 'b'}", check_exit=0)  # another run: the cache
    again = outputs(tmp_path / "b")
    assert server.stats()["requests"] == sent and all(r["_provenance"]["dialogue"]["cached"] for r in again)


def test_target_rounds_keep_the_stages_provenance(tmp_path):
    """``target.records`` rounds rebuild the model stages with shifted seeds: the switch goes along."""
    from recipe.clients.factory import ClientSpec
    from recipe.engine.target import round_stages
    from recipe.stages.build import build_stages

    recipe = {"stages": {"generate": {"_target_": "recipe.stages.GenerateStage"},
                         "write": {"_target_": "recipe.stages.WriteStage"}}}
    spec = ClientSpec(provider="openai", model="m", sampling=(("seed", 1),))
    for on in (True, False):
        stages = build_stages(recipe, spec, str(tmp_path), provenance=on)
        shifted = round_stages(stages, 2)[0]
        assert shifted is not stages[0] and shifted.provenance is on


def test_a_run_over_earlier_output_adds_its_entry_and_a_foreign_field_is_refused(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, "first", "provenance=true")
    earlier = outputs(tmp_path / "first")[:3]
    rows = earlier + [{"prompt": "mine", "response": "x", "_provenance": {"by": "hand"}}]
    write_jsonl(tmp_path / "again.jsonl", rows)
    conf = write_recipe(tmp_path, {
        "read": {"_target_": "recipe.stages.ReadStage", "path": str(tmp_path / "again.jsonl")},
        "again": {"_target_": "recipe.stages.GenerateStage", "prompt": "again: {{ response }}", "output_field": "again"},
        "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl"}})
    cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / 'second'}",
        *stub_overrides(server), "provenance=true", check_exit=3)
    good, (bad,) = outputs(tmp_path / "second"), error_rows(tmp_path / "second")
    assert "field _provenance is reserved" in bad["_error"]["message"] and bad["record"]["prompt"] == "mine"
    sent = _sent(server)
    by_id = {r["_id"]: r for r in earlier}
    assert sorted(by_id) == sorted(r["_id"] for r in good)
    for record in good:
        assert set(record["_provenance"]) == {"generate", "again"}
        assert record["_provenance"]["generate"] == by_id[record["_id"]]["_provenance"]["generate"]  # kept as it was
        assert record["_provenance"]["again"]["model"] == sent[f"again: {record['response']}"]["model"]
