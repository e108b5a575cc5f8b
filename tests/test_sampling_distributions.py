"""Per-request sampling distributions (``sampling.temperature: {uniform: [lo, hi]}``), on the stub:
the value is read off the wire, per record and stage, the same on a rerun (so the cache answers)."""

from __future__ import annotations

import json

import pytest

from conftest import cli, outputs, stub_overrides, write_prompts


def _run(tmp_path, server, out: str, *extra: str, check_exit=0):
    write_prompts(tmp_path / "in.jsonl", 40)
    return cli(tmp_path, "recipe=generate", f"input={tmp_path / 'in.jsonl'}", f"output_dir={tmp_path / out}",
               *stub_overrides(server), "dask.partition_size=7", *extra, check_exit=check_exit)


def _sent(server) -> dict[str, dict]:
    return {b["messages"][-1]["content"]: b for b in server.stats()["bodies"]}


def test_temperature_and_top_p_are_drawn_per_record_and_the_same_on_a_rerun(tmp_path, stub_server):
    server = stub_server()
    dist = ["sampling.temperature={uniform:[0.5,1.0]}", "sampling.top_p={values:[0.8,0.95],weights:[1,3]}"]
    _run(tmp_path, server, "a", *dist)
    first = _sent(server)
    assert len(first) == 40 and server.stats()["requests"] == 40
    temperatures = [b["temperature"] for b in first.values()]
    assert all(0.5 <= t <= 1.0 for t in temperatures) and len(set(temperatures)) > 30
    tops = [b["top_p"] for b in first.values()]
    assert set(tops) == {0.8, 0.95} and 20 < tops.count(0.95) < 40
    # a rerun in another folder: the same values, so every answer comes from the cache
    _run(tmp_path, server, "b", *dist, "dask.partition_size=40")
    assert server.stats()["requests"] == 40
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["cache_hits"] == 40 and len(outputs(tmp_path / "b")) == 40
    # another seed draws other values: new requests
    _run(tmp_path, server, "c", *dist, "sampling.seed=9")
    again = {p: b["temperature"] for p, b in _sent(server).items()}
    assert server.stats()["requests"] == 80
    assert sum(again[p] != first[p]["temperature"] for p in first) > 30


@pytest.mark.parametrize("override, expected", [
    ("sampling.temperature={uniform:[1.0,0.5]}", "sampling.temperature.uniform: low=1.0 > high=0.5"),
    ("sampling.top_p={values:[0.5,1.5]}", "sampling.top_p: 1.5 is out of range for top_p"),
    ("sampling.top_p={values:[0.5,0.9],weights:[1]}", "sampling.top_p: weights has 1 entries but values has 2"),
])
def test_a_bad_distribution_is_one_error_line(tmp_path, stub_server, override, expected):
    server = stub_server()
    result = _run(tmp_path, server, "a", override, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert server.stats()["requests"] == 0
