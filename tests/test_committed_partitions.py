"""A partition counts as committed only while its files hold what its manifest says, and a partition
that ``target.records`` cut short is finished by a later run that wants more (issue 21, items 4, 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, outputs, stub_overrides, write_prompts


def _stats(folder: Path) -> dict:
    return json.loads((folder / "stats.json").read_text())


def test_a_run_without_a_target_after_a_trimmed_one_has_every_record_and_pays_for_none_twice(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out"
    args = [*stub_overrides(server), f"input={source}", f"output_dir={out}"]
    cli(tmp_path, *args, "target.records=5", check_exit=0)
    assert len(outputs(out)) == 5
    cli(tmp_path, *args, check_exit=0)
    rows = outputs(out)
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(200))
    assert _stats(out)["records"] == 200
    asked = [b["messages"][-1]["content"] for b in server.stats()["bodies"]]
    assert server.stats()["requests"] == 200 and len(set(asked)) == len(asked), \
        "the records cut by the trim come from the cache: no question is asked twice"
    cli(tmp_path, *args, "target.records=5", check_exit=0)  # a target again: back to exactly 5
    assert [r["prompt"] for r in outputs(out)] == [r["prompt"] for r in rows][:5]
    assert server.stats()["requests"] == 200


@pytest.mark.parametrize("damage", ["delete", "cut", "delete-errors"])
def test_a_part_file_deleted_or_cut_by_hand_is_done_again(stub_server, tmp_path, damage):
    server = stub_server()
    rows = [{"prompt": f"question {i}"} for i in range(20)]
    rows[7] = "{not json"  # partition 1 also has an error file
    source = tmp_path / "in.jsonl"
    source.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / "out"
    args = [*stub_overrides(server), f"input={source}", f"output_dir={out}", "dask.partition_size=5"]
    cli(tmp_path, *args, check_exit=3)
    before = outputs(out)
    assert len(before) == 19
    part, errors = out / "part-00001.jsonl", out / "errors" / "part-00001.jsonl"
    if damage == "delete":
        part.unlink()
    elif damage == "cut":
        part.write_text("".join(part.read_text().splitlines(keepends=True)[:2]))
    else:
        errors.unlink()
    sent = server.stats()["requests"]
    result = cli(tmp_path, *args, check_exit=3)
    assert sorted(r["prompt"] for r in outputs(out)) == sorted(r["prompt"] for r in before)
    assert errors.exists() and len(errors.read_text().splitlines()) == 1
    assert "19 records, 1 failed" in result.stdout
    assert "3 of 4 partitions were already done" in result.stdout, result.stdout
    assert server.stats()["requests"] == sent, "its answers come from the cache"
