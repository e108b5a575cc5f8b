"""``when:`` on LLM stages, through the CLI on the stub: only records where it holds are sent."""

from __future__ import annotations

import json

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl
from test_sample import write_recipe


def _recipe(tmp_path, when: str, when_false: str | None = None) -> object:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}", "rating": i % 5 + 1} for i in range(50)])
    generate = {"_target_": "recipe.stages.GenerateStage", "prompt": "{{ prompt }}", "output_field": "response",
                "when": when}
    if when_false:
        generate["when_false"] = when_false
    return write_recipe(tmp_path, {"read": {"_target_": "recipe.stages.ReadStage", "path": str(tmp_path / "in.jsonl")},
                                   "answer": generate,
                                   "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl"}})


def _run(tmp_path, server, conf, *extra, check_exit=0):
    return cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / 'out'}",
               *stub_overrides(server), "dask.partition_size=8", *extra, check_exit=check_exit)


def test_when_sends_only_matching_records_and_the_rest_pass_with_null(tmp_path, stub_server):
    server = stub_server()
    conf = _recipe(tmp_path, "rating <= 2")
    _run(tmp_path, server, conf)
    records = outputs(tmp_path / "out")
    assert len(records) == 50
    sent = {json.loads(b)["messages"][-1]["content"] if isinstance(b, str) else b["messages"][-1]["content"]
            for b in server.stats()["bodies"]}
    assert server.stats()["requests"] == 20
    for r in records:
        if r["rating"] <= 2:
            assert r["prompt"] in sent and r["response"] == f"echo: {r['prompt']}"
        else:
            assert r["prompt"] not in sent and r["response"] is None
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"] == {"answer": 30} and stats["records"] == 50


def test_when_false_drop_leaves_them_out_and_counts_them(tmp_path, stub_server):
    server = stub_server()
    conf = _recipe(tmp_path, "rating == 5", when_false="drop")
    _run(tmp_path, server, conf)
    records = outputs(tmp_path / "out")
    assert sorted(r["prompt"] for r in records) == sorted(f"question {i}" for i in range(50) if i % 5 == 4)
    assert all(r["response"] == f"echo: {r['prompt']}" for r in records)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"] == {"answer": 40} and server.stats()["requests"] == 10


def test_a_when_failing_on_one_record_makes_that_record_an_error(tmp_path, stub_server):
    server = stub_server()
    conf = _recipe(tmp_path, "10 / (rating - 3) > 0")
    _run(tmp_path, server, conf, check_exit=3)
    bad = error_rows(tmp_path / "out")
    assert len(bad) == 10 and all("ZeroDivisionError" in e["_error"]["message"] for e in bad)
    assert {e["record"]["rating"] for e in bad} == {3}
    assert server.stats()["requests"] == 20  # ratings 4 and 5


@pytest.mark.parametrize("when, expected", [
    ("rating <=", "recipe.stages.answer.when"),
    ("stars > 2", "recipe.stages.answer.when"),
])
def test_a_bad_when_is_one_error_line(tmp_path, stub_server, when, expected):
    server = stub_server()
    conf = _recipe(tmp_path, when)
    result = _run(tmp_path, server, conf, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert server.stats()["requests"] == 0
    assert ("does not parse" in lines[0] and expected in lines[0]) if when.endswith("<=") else "'stars'" in lines[0]
