"""``WriteStage`` ``shape`` and ``fields`` through the CLI on the stub: what the output file holds."""

from __future__ import annotations


from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl
from test_sample import write_recipe


def _run(tmp_path, server, write: dict, rows: list[dict], check_exit=0):
    write_jsonl(tmp_path / "in.jsonl", rows)
    conf = write_recipe(tmp_path, {
        "read": {"_target_": "recipe.stages.ReadStage", "path": str(tmp_path / "in.jsonl")},
        "answer": {"_target_": "recipe.stages.GenerateStage", "prompt": "{{ question }}", "output_field": "answer"},
        "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl", **write}})
    return cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / 'out'}",
               *stub_overrides(server), check_exit=check_exit)


ROWS = [{"question": f"q{i}", "tags": ["a", str(i)], "meta": {"n": i}, "score": i / 2} for i in range(6)]


def test_shape_builds_an_sft_file_keeping_types_and_ids(tmp_path, stub_server):
    server = stub_server()
    shape = {"messages": [{"role": "user", "content": "{{ question }}"},
                          {"role": "assistant", "content": "{{ answer }}"}],
             "tags": "{{ tags }}", "meta": "{{ meta }}", "score": "{{ score }}", "label": "q={{ question }}!"}
    _run(tmp_path, server, {"shape": shape}, ROWS)
    records = outputs(tmp_path / "out")
    sent = {b["messages"][-1]["content"] for b in server.stats()["bodies"]}
    answered = {r["question"]: r for r in ROWS}
    assert len(records) == 6
    for r in records:
        q = r["messages"][0]["content"]
        assert set(r) == {"messages", "tags", "meta", "score", "label", "_id", "_parent"}
        assert q in sent and r["messages"][1] == {"role": "assistant", "content": f"echo: {q}"}
        assert r["tags"] == answered[q]["tags"] and r["meta"] == answered[q]["meta"]  # a list, a dict: not text
        assert r["score"] == answered[q]["score"] and r["label"] == f"q={q}!"
        assert len(r["_id"]) == 16 and r["_parent"] is None


def test_fields_keep_drop_and_rename(tmp_path, stub_server):
    server = stub_server()
    _run(tmp_path, server, {"fields": {"keep": ["question", "answer", "score"], "drop": ["_parent"],
                                       "rename": {"answer": "response"}}}, ROWS)
    records = outputs(tmp_path / "out")
    assert len(records) == 6
    for r in records:
        assert set(r) == {"question", "response", "score", "_id"}
        assert r["response"] == f"echo: {r['question']}"


def test_a_record_the_shape_cannot_be_built_for_is_an_error_record(tmp_path, stub_server):
    server = stub_server()
    rows = ROWS[:3] + [{"question": "q9", "tags": [], "meta": {}}]  # no score
    _run(tmp_path, server, {"shape": {"q": "{{ question }}", "s": "{{ score * 2 }}"}}, rows, check_exit=3)
    assert sorted(r["q"] for r in outputs(tmp_path / "out")) == ["q0", "q1", "q2"]
    (bad,) = error_rows(tmp_path / "out")
    assert bad["record"]["question"] == "q9" and "score" in bad["_error"]["message"]


def test_a_shape_template_that_does_not_parse_is_one_error_line(tmp_path, stub_server):
    server = stub_server()
    result = _run(tmp_path, server, {"shape": {"messages": [{"content": "{{ question }"}]}}, ROWS, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "shape.messages[0].content" in lines[0], lines
    assert server.stats()["requests"] == 0
