"""Every record exactly once across reruns: run folders, committed partitions, one account per run.

Real processes throughout: ``python -m recipe`` subprocesses or ``recipe.run``, the stub server
(a real HTTP server on 127.0.0.1) and real files.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import recipe
from conftest import cli as run_cli
from conftest import cli_process, error_rows, outputs, stub_overrides, write_jsonl


def write_inputs(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"prompt": f"question {i}", "n": i} for i in range(n)])


def cli(tmp_path: Path, *args: str, timeout: float = 120, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    """The CLI, its exit code checked (0 unless told)."""
    return run_cli(tmp_path, *args, timeout=timeout, check_exit=check_exit)


def output_of(result: subprocess.CompletedProcess) -> Path:
    return Path(next(l for l in result.stdout.splitlines() if l.startswith("output: ")).removeprefix("output: "))


# ---- 1. the same command continues the same run ----------------------------------------------

def test_the_same_command_continues_the_same_run(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 6)
    args = stub_overrides(server, f"input={source}", "dask.partition_size=2")
    first = cli(tmp_path, *args)
    sent = server.stats()["requests"]
    second = cli(tmp_path, *args)
    run = output_of(first)
    assert output_of(second) == run, "the rerun opened another folder"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]
    assert re.fullmatch(r"generate-[0-9a-f]{12}", run.name)
    assert server.stats()["requests"] == sent == 6
    line = second.stdout.splitlines()[-1]
    assert line.startswith("6 records, 0 failed, 6 requests")
    assert "resumed, attempt 2: 6 records and 0 failures in 3 of 3 partitions were already done" in line
    assert sorted(r["n"] for r in outputs(run)) == list(range(6))


def test_a_changed_config_is_a_different_run_and_sizing_is_not(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 4)
    base = stub_overrides(server, f"input={source}")
    a = recipe.run(recipe.compose(base + ["sampling.temperature=0.3"]))
    b = recipe.run(recipe.compose(base + ["sampling.temperature=0.9"]))
    c = recipe.run(recipe.compose(base + ["sampling.temperature=0.3", "dask.partition_size=1",
                                          "backend.max_concurrency=2", "backend.timeout=30", "cache.enabled=false"]))
    assert Path(a.output_dir).parent == tmp_path / "runs"  # RECIPE_RUNS_DIR, set by conftest
    assert a.output_dir != b.output_dir
    assert c.output_dir == a.output_dir and c.stats["attempts"] == 2 and c.stats["this_attempt"]["requests"] == 0
    assert {b["temperature"] for b in server.stats()["bodies"]} == {0.3, 0.9}
    # the input's content is part of the identity: an edited file is a new run
    source.write_text(source.read_text() + json.dumps({"prompt": "one more", "n": 4}) + "\n")
    d = recipe.run(recipe.compose(base + ["sampling.temperature=0.3"]))
    assert d.output_dir not in (a.output_dir, b.output_dir) and d.records == 5


def test_output_dir_holding_another_configs_results_is_refused(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out"
    cli(tmp_path, *stub_overrides(server, f"input={source}", f"output_dir={out}", "sampling.temperature=0.3"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    refused = cli(tmp_path, *stub_overrides(server, f"input={source}", f"output_dir={out}", "sampling.temperature=0.9"),
                  check_exit=2)
    assert refused.stderr.startswith("error: output_dir ") and "different config" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert server.stats()["requests"] == 3
    # the same refusal through the API
    with pytest.raises(recipe.ConfigError, match="different config"):
        recipe.run(recipe.compose(stub_overrides(server, f"input={source}", "sampling.temperature=0.9")),
                   output_dir=str(out))


def test_explicit_output_dir_resumes_and_holds_config_log_and_stats(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out"
    args = stub_overrides(server, f"input={source}", f"output_dir={out}")
    cli(tmp_path, *args)
    second = cli(tmp_path, *args)
    assert output_of(second) == out and "resumed, attempt 2" in second.stdout
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "recipe.log", "stats.json", "run.json"):
        assert (out / name).is_file(), name
    assert list((tmp_path / "cwd").iterdir()) == [], "nothing goes to ./outputs/DATE/TIME"
    assert not (tmp_path / "runs").exists()
    assert json.loads((out / "stats.json").read_text())["attempts"] == 2


def test_resume_false_clears_the_runs_parts_first(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out"
    base = stub_overrides(server, f"input={source}", f"output_dir={out}", "cache.enabled=false")
    recipe.run(recipe.compose(base + ["dask.partition_size=3"]))
    assert len(list(out.glob("part-*.jsonl"))) == 4
    summary = recipe.run(recipe.compose(base + ["dask.partition_size=5", "resume=false"]))
    assert sorted(p.name for p in out.glob("part-*.jsonl")) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert sorted(r["n"] for r in outputs(out)) == list(range(10))
    assert summary.stats["attempts"] == 1 and summary.stats["requests"] == 10 and summary.stats["resumed"] is None
    assert server.stats()["requests"] == 20


def test_a_sweep_gives_each_job_its_run_folder_and_resumes_them(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 2)
    args = ["-m", "sampling.temperature=0.2,0.8", *stub_overrides(server, f"input={source}")]
    first = cli(tmp_path, *args)
    folders = [Path(l.removeprefix("output: ")) for l in first.stdout.splitlines() if l.startswith("output: ")]
    assert len(set(folders)) == 2 and all(f.parent == tmp_path / "runs" for f in folders)
    assert all((f / ".hydra" / "config.yaml").is_file() and (f / "recipe.log").is_file() for f in folders)
    second = cli(tmp_path, *args)
    assert [Path(l.removeprefix("output: ")) for l in second.stdout.splitlines() if l.startswith("output: ")] == folders
    assert second.stdout.count("resumed, attempt 2") == 2
    assert server.stats()["requests"] == 4


# ---- transient failures are retried, the others kept; good and error files replaced together --

def _failing_then_healthy(stub_server, tmp_path, *extra: str, bad_record: bool = True):
    """The issue's case: every request fails (num_retries=0), then the same endpoint is healthy.

    With ``bad_record``, a fourth record fails for its own reason (no prompt field)."""
    failing = stub_server(fail_500=1.0)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"question {i}", "n": i}) + "\n" for i in range(3))
                      + (json.dumps({"question": "no prompt field", "n": 3}) + "\n" if bad_record else ""))
    out = tmp_path / "out"
    args = stub_overrides(failing, f"input={source}", f"output_dir={out}", "backend.num_retries=0", *extra)
    first = recipe.run(recipe.compose(args))
    assert first.records == 0 and first.failed == 3 + bad_record
    assert first.stats["failed_by_class"] == ({"ServerError": 3, "InputError": 1} if bad_record else {"ServerError": 3})
    port = failing.port
    failing.stop()
    healthy = stub_server(port=port)
    return healthy, out, args


def test_rerun_retries_transient_failures_and_keeps_records_that_failed_for_their_own_reasons(stub_server, tmp_path):
    healthy, out, args = _failing_then_healthy(stub_server, tmp_path)
    second = recipe.run(recipe.compose(args))
    assert healthy.stats()["requests"] == 3
    good, bad = outputs(out), error_rows(out)
    assert sorted(r["n"] for r in good) == [0, 1, 2]
    assert [e["_error"]["class"] for e in bad] == ["InputError"]
    assert not {r["_id"] for r in good} & {e["_id"] for e in bad}, "a record is both in part-N and errors/part-N"
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["records"], stats["failed"], stats["failed_by_class"]) == (3, 1, {"InputError": 1})
    assert stats == second.stats and stats["attempts"] == 2
    assert stats["requests"] == 6, "3 failed requests in attempt 1 and 3 answered in attempt 2"


def test_a_partitions_good_and_error_files_are_replaced_together(stub_server, tmp_path):
    """The issue's reproduction: after the rerun the three records were in part-00000.jsonl and in
    errors/part-00000.jsonl, and stats.json said failed: 0."""
    healthy, out, args = _failing_then_healthy(stub_server, tmp_path, bad_record=False)
    recipe.run(recipe.compose(args))
    assert sorted(r["n"] for r in outputs(out)) == [0, 1, 2]
    assert not (out / "errors" / "part-00000.jsonl").exists()
    assert error_rows(out) == []
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["records"], stats["failed"]) == (3, 0)


def test_retry_failed_false_keeps_every_failure(stub_server, tmp_path):
    healthy, out, args = _failing_then_healthy(stub_server, tmp_path)
    second = recipe.run(recipe.compose(args + ["retry_failed=false"]))
    assert healthy.stats()["requests"] == 0
    assert outputs(out) == [] and len(error_rows(out)) == 4
    assert second.failed == 4 and second.records == 0


# ---- 2. committed partitions are not done again ----------------------------------------------

def test_a_complete_run_is_not_replayed_from_the_cache(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 8)
    args = stub_overrides(server, f"input={source}", f"output_dir={tmp_path / 'out'}", "dask.partition_size=3")
    recipe.run(recipe.compose(args))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    again = recipe.run(recipe.compose(args))
    assert again.stats["this_attempt"] == {"attempt": 2, "requests": 0, "cache_hits": 0, "partitions_written": 0,
                                           "wall_seconds": again.stats["this_attempt"]["wall_seconds"]}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")} == mtimes
    assert again.records == 8 and again.stats["requests"] == 8


def test_after_a_kill_only_uncommitted_partitions_are_done(stub_server, tmp_path):
    server = stub_server(latency=0.3)
    source = write_inputs(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out"
    args = stub_overrides(server, f"input={source}", f"output_dir={out}", "dask.partition_size=5",
                     "backend.max_concurrency=4")
    proc = cli_process(tmp_path, *args)
    deadline = time.monotonic() + 90
    while len(list((out / "manifests").glob("part-*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    committed = [json.loads(p.read_text()) for p in (out / "manifests").glob("part-*.json")]
    done = sum(m["records"] for m in committed)
    assert 3 <= len(committed) < 12, "the kill must land part-way"
    rerun = recipe.run(recipe.compose(args + ["dask.partition_size=7"]))  # sizing changes cannot move partitions
    this = rerun.stats["this_attempt"]
    assert this["requests"] + this["cache_hits"] == 60 - done, "committed partitions were done again"
    assert this["partitions_written"] == 12 - len(committed)
    assert sorted(r["n"] for r in outputs(out)) == list(range(60)), "every record exactly once"
    assert sorted(p.name for p in out.glob("part-*.jsonl")) == [f"part-{i:05d}.jsonl" for i in range(12)]
    assert rerun.stats["attempts"] == 2 and rerun.stats["resumed"]["partitions"] == len(committed)


def test_a_resumed_run_keeps_its_partitioning(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out"
    base = stub_overrides(server, f"input={source}", f"output_dir={out}")
    recipe.run(recipe.compose(base + ["dask.partition_size=3"]))
    (out / "manifests" / "part-00003.json").unlink()  # as if the attempt died before committing the last one
    summary = recipe.run(recipe.compose(base + ["dask.partition_size=4"]))
    assert sorted(p.name for p in out.glob("part-*.jsonl")) == [f"part-{i:05d}.jsonl" for i in range(4)]
    assert sorted(r["n"] for r in outputs(out)) == list(range(10)), "a stale or overlapping part survived"
    assert summary.records == 10 and summary.stats["this_attempt"]["partitions_written"] == 1


def test_stale_temporary_files_are_cleaned_up(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out"
    args = stub_overrides(server, f"input={source}", f"output_dir={out}")
    recipe.run(recipe.compose(args))
    stale = [out / ".part-00000.jsonl.4242.tmp", out / "errors" / ".part-00000.jsonl.4242.tmp",
             out / ".part-00007.parquet.99.ab12cd34.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half a record")
    recipe.run(recipe.compose(args))
    assert not [p for p in stale if p.exists()]


# ---- 3. one account per run -----------------------------------------------------------------

def test_stats_sum_every_attempt_and_count_nothing_twice(stub_server, tmp_path):
    healthy, out, args = _failing_then_healthy(stub_server, tmp_path)
    recipe.run(recipe.compose(args))
    third = recipe.run(recipe.compose(args))
    attempts = [json.loads(p.read_text()) for p in sorted((out / "attempts").glob("attempt-*.json"))]
    assert [a["usage"]["requests"] for a in attempts] == [3, 3, 0]
    assert [a["outcome"] for a in attempts] == ["completed"] * 3
    s = third.stats
    assert s["attempts"] == 3 and s["requests"] == 6
    assert s["completion_tokens"] == sum(a["usage"].get("completion_tokens", 0) for a in attempts) > 0
    assert s["request_failures_by_class"] == {"ServerError": 3}
    assert (s["records"], s["failed"]) == (3, 1)


def test_the_progress_bar_moves_with_records_inside_a_partition(stub_server, tmp_path):
    server = stub_server(latency=0.05)
    source = write_inputs(tmp_path / "in.jsonl", 256)
    result = cli(tmp_path, *stub_overrides(server, f"input={source}", "backend.max_concurrency=4", "progress=true",
                                      "dask.partition_size=256"), timeout=180)
    shown = [int(n) for n in re.findall(r"records: (\d+)", result.stderr)]
    assert shown and shown[-1] == 256
    assert any(0 < n < 256 for n in shown), f"the bar jumped from 0 to 256: {sorted(set(shown))}"


# ---- 4. Parquet keeps every field -------------------------------------------------------------

def test_parquet_keeps_every_field_and_reads_back_as_one_dataset(stub_server, tmp_path):
    import dask.dataframe as dd
    import pyarrow.dataset as ds

    server = stub_server()
    rows = [
        {"prompt": "p0", "n": 0, "mixed": 1},
        {"prompt": "p1", "n": 1, "mixed": "one", "late": "only here", "meta": {"a": 1}},
        {"prompt": "p2", "n": 2, "across": 5, "meta": {"b": "x"}},   # partition 1: across is an int
        {"prompt": "p3", "n": 3, "across": "five", "empty": {}},       # partition 2: across is a string
        {"prompt": "p4", "n": 4, "big": 2 ** 70},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(stub_overrides(server, f"input={source}", f"output_dir={out}",
                                                  "dask.partition_size=2", "recipe.stages.write.format=parquet")))
    assert summary.records == 5 and summary.failed == 0
    assert summary.stats["json_fields"] == ["across", "big", "empty", "mixed"]
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3
    table = ds.dataset(parts, format="parquet").to_table()
    assert ds.dataset(out, format="parquet", exclude_invalid_files=True).to_table().num_rows == 5
    frame = dd.read_parquet(str(out)).compute()
    assert sorted(frame.columns) == sorted(table.column_names)
    got = {r["n"]: r for r in table.to_pylist()}
    for row in rows:
        back = got[row["n"]]
        assert back["response"] == f"echo: {row['prompt']}"
        for key, value in row.items():
            if key in summary.stats["json_fields"]:
                assert json.loads(back[key]) == value, key
            elif key == "meta":
                assert {k: v for k, v in back[key].items() if v is not None} == value
            else:
                assert back[key] == value, key
        for key in ("late", "across", "meta", "mixed"):  # fields missing from a record are null, not dropped
            assert key in back


def test_a_partition_computed_twice_is_counted_once(tmp_path):
    """Dask may compute a task again (a lost worker, a second compute): the counters the progress bar
    reads are set per committed partition, not added."""
    from recipe.engine.progress import collect
    from recipe.stages import ReadStage, WriteStage, progress

    source = write_inputs(tmp_path / "in.jsonl", 5)
    read = ReadStage(path=str(source), partition_size=2)
    bag = WriteStage(path=str(tmp_path / "out"))(read(None))
    progress.reset()
    first = bag.compute(scheduler="threads")
    again = bag.compute(scheduler="threads")
    assert [m["records"] for m in first] == [m["records"] for m in again] == [2, 2, 1]
    counted = collect(None)
    assert (counted["records"], counted["errors"]) == (5, 0)
    assert sorted(r["n"] for r in outputs(tmp_path / "out")) == list(range(5))
