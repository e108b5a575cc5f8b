"""One value no UTF-8 file can hold (a lone UTF-16 surrogate) makes one error record, in any field
and any output format; the run goes on (issue 21, item 6)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import cli, stub_overrides

# valid JSON, each line: the escapes decode to a lone surrogate
LINES = ['{"prompt": "question 0"}',
         '{"prompt": "bad \\ud800 surrogate"}',
         '{"prompt": "question 2", "meta": {"tags": ["ok", "bad \\udfff tag"]}}',
         '{"prompt": "question 3", "\\udc80key": 1}',
         '{"prompt": "question 4"}']


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_a_lone_surrogate_makes_one_error_record_in_every_format(stub_server, tmp_path, fmt):
    server = stub_server()
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(LINES) + "\n", encoding="ascii")
    out = tmp_path / "out"
    args = [*stub_overrides(server), f"input={source}", f"output_dir={out}", f"recipe.stages.write.format={fmt}"]
    result = cli(tmp_path, *args, check_exit=3)
    assert "Traceback" not in result.stderr
    assert "2 records, 3 failed" in result.stdout
    if fmt == "jsonl":
        good = [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    else:
        files = sorted((out / "data" if fmt == "hf" else out).glob("part-*.parquet"))
        good = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert sorted(r["prompt"] for r in good) == ["question 0", "question 4"]
    raw = [line for part in sorted((out / "errors").glob("*.jsonl")) for line in part.read_bytes().splitlines()]
    for line in raw:
        line.decode("utf-8")  # every error line is valid UTF-8 (the surrogate kept as a JSON escape)
    errors = [json.loads(line) for line in raw]
    fields = sorted(e["_error"]["message"].split("'")[1] for e in errors)
    assert fields == ["\\udc80key", "meta.tags[1]", "prompt"]  # named printably
    assert {e["_error"]["class"] for e in errors} == {"InputError"}
    assert sorted(e["record"]["prompt"] for e in errors) == ["bad \ud800 surrogate", "question 2", "question 3"]
    again = cli(tmp_path, *args, check_exit=3)  # a rerun: the same, nothing asked again
    assert "2 records, 3 failed" in again.stdout
