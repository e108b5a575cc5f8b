"""Storage through fsspec: local paths unchanged, s3:// against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import s3fs

import recipe
from recipe.errors import ConfigError
from recipe import storage
from recipe.stages.io.read import _jsonl_blocks, _read_jsonl_block
from recipe.storage import resolve_paths

from conftest import cli, cli_process


def lines(n: int, bad_at: int | None = None) -> bytes:
    rows = [json.dumps({"prompt": f"question {i}"}).encode() for i in range(n)]
    if bad_at is not None:
        rows[bad_at] = b'{"prompt": "broken'
    return b"\n".join(rows) + b"\n"


def test_atomic_write_on_s3_is_one_object_or_none(s3_bucket):
    target = f"{s3_bucket}/out/part-00000.jsonl"
    with pytest.raises(RuntimeError):
        def fill(tmp: Path) -> None:
            tmp.write_bytes(b"half a part")
            raise RuntimeError("killed while writing")

        storage.atomic_write(target, fill)
    assert not storage.exists(target), "a failed write leaves nothing visible"
    assert s3fs.S3FileSystem().find("bucket") == [], "and no temporary object either"
    storage.atomic_write_bytes(target, b"whole\n")
    assert storage.read_text(target) == "whole\n"
    assert storage.listdir(f"{s3_bucket}/out", "part-*.jsonl") == [target]
    storage.remove(target)
    assert storage.read_text(target) is None


def test_jsonl_on_s3_keeps_byte_range_partitions_and_file_line_provenance(s3_bucket, tmp_path):
    data = lines(10, bad_at=5)
    local = tmp_path / "in.jsonl"
    local.write_bytes(data)
    remote = f"{s3_bucket}/in/in.jsonl"
    storage.atomic_write_bytes(remote, data)
    assert resolve_paths(f"{s3_bucket}/in/*.jsonl") == [remote]
    local_blocks, remote_blocks = _jsonl_blocks(str(local), 4), _jsonl_blocks(remote, 4)
    ends = [sum(len(line) + 1 for line in data.split(b"\n")[:k]) for k in (4, 8, 10)]
    assert [b[1:] for b in remote_blocks] == [b[1:] for b in local_blocks] == \
        [(0, ends[0], 1), (ends[0], ends[1], 5), (ends[1], ends[2], 9)]
    records = [r for block in remote_blocks for r in _read_jsonl_block(block)]
    expected = [r for block in local_blocks for r in _read_jsonl_block(block)]
    assert len(records) == 10
    for got, want in zip(records, expected):
        if "_error" in want:
            assert got["_error"]["message"].startswith(f"{remote}:6: malformed JSON")
        else:
            assert got == want  # same _id and _source (file:line) as the local copy
    assert records[6]["_source"] == "in.jsonl:7"


def test_a_missing_backend_is_one_line_naming_the_extra():
    with pytest.raises(ConfigError) as info:
        resolve_paths("gs://bucket/in/*.jsonl")
    assert "pip install 'recipe[gcs]'" in str(info.value) and "\n" not in str(info.value)


def test_a_missing_s3_input_is_refused_up_front(s3_bucket, tmp_path):
    proc = cli(tmp_path, f"input={s3_bucket}/nope.jsonl", "backend=openai", "backend.api_base=http://127.0.0.1:9/v1",
               "backend.api_key=k", "model.name=m", timeout=120, check_exit=2)
    assert proc.stderr.strip() == f"error: input file not found: {s3_bucket}/nope.jsonl"


def test_a_run_reads_its_input_from_s3(stub_server, s3_bucket, tmp_path):
    server = stub_server()
    storage.atomic_write_bytes(f"{s3_bucket}/in/a.jsonl", lines(6))
    cfg = recipe.compose(["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                          "model.name=stub-model", "progress=false", f"input={s3_bucket}/in/*.jsonl",
                          "dask.partition_size=4"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert (summary.records, summary.failed) == (6, 0)
    rows = [json.loads(line) for part in sorted((tmp_path / "out").glob("part-*.jsonl"))
            for line in part.read_text().splitlines()]
    assert sorted(r["_source"] for r in rows) == [f"a.jsonl:{i}" for i in range(1, 7)]


# ---- a whole run on S3: kill -9, rerun, every record once ----------------------------------------

def _s3_rows(prefix: str) -> list[dict]:
    return [json.loads(line) for part in storage.listdir(prefix, "part-*.jsonl")
            for line in storage.read_text(part).splitlines()]


def _manifests(prefix: str) -> dict[str, float]:
    return {storage.name(m): json.loads(storage.read_text(m))["committed"]
            for m in storage.listdir(f"{prefix}/manifests", "part-*.json")}


def _kill_mid_run_and_rerun(server, s3_bucket, tmp_path, *extra: str, n: int = 60) -> tuple[dict, dict]:
    import signal
    import time

    storage.atomic_write_bytes(f"{s3_bucket}/in/data.jsonl", lines(n))
    command = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
               "progress=false", f"input={s3_bucket}/in/*.jsonl", f"output_dir={s3_bucket}/out",
               "dask.partition_size=5", "backend.max_concurrency=4", *extra]
    proc = cli_process(tmp_path, *command)  # the leader of its own process group
    deadline = time.monotonic() + 240
    while len(_manifests(f"{s3_bucket}/out")) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the run: the driver and its LocalCluster
    proc.wait()
    before = _manifests(f"{s3_bucket}/out")
    assert 3 <= len(before) < n // 5, "the kill must land part-way"
    cli(tmp_path, *command, timeout=600, check_exit=0)
    rows = _s3_rows(f"{s3_bucket}/out")
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(n)), "every record exactly once"
    after = _manifests(f"{s3_bucket}/out")
    assert len(after) == n // 5
    assert {k: after[k] for k in before} == before, "committed partitions are not redone"
    return before, after


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_s3_run_killed_and_rerun_on_a_local_cluster(stub_server, s3_bucket, tmp_path):
    server = stub_server(latency=0.3)
    _kill_mid_run_and_rerun(server, s3_bucket, tmp_path, "dask.n_workers=2")
    assert server.stats()["requests"] <= 60 + 8, "answered requests came from the cache (at most those in flight again)"
    hydra_dirs = list((tmp_path / "runs").glob("*/.hydra"))
    assert len(hydra_dirs) == 1, "Hydra's run folder (config, log) stays local"
    assert not storage.exists(f"{s3_bucket}/out/.hydra/config.yaml")
    stats = json.loads(storage.read_text(f"{s3_bucket}/out/stats.json"))
    assert stats["records"] == 60 and stats["attempts"] == 2


def test_s3_run_killed_and_rerun_on_separate_dask_workers(stub_server, s3_bucket, dask_processes, tmp_path):
    server = stub_server(latency=0.3)
    address = dask_processes(n_workers=2)  # separate working directories; S3 is the only shared storage
    _kill_mid_run_and_rerun(server, s3_bucket, tmp_path, f"dask.address={address}", "cache.enabled=false")
    # without a cache, a partition in flight at the kill is asked again: at most one per worker thread
    assert server.stats()["requests"] <= 60 + 2 * 5


@pytest.mark.parametrize("form", ["relative", "absolute", "file_url", "home"])
def test_local_paths_in_every_form_go_through_the_same_calls(tmp_path, monkeypatch, form):
    """isfile, exists, read_range and remove ask fsspec for local paths too: each form a user may
    write (relative, absolute, file://, ~) names the same file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_bytes(b"0123456789")
    path = {"relative": "d/f.txt", "absolute": str(tmp_path / "d" / "f.txt"),
            "file_url": f"file://{tmp_path / 'd' / 'f.txt'}", "home": "~/d/f.txt"}[form]
    folder = path.rsplit("/", 1)[0]
    assert storage.isfile(path) and storage.exists(path)
    assert not storage.isfile(folder) and storage.exists(folder)
    assert storage.read_range(path, 2, 5) == b"234"
    storage.remove(path)
    storage.remove(path)  # gone already: nothing to do
    assert not storage.isfile(path) and not storage.exists(path) and not (tmp_path / "d" / "f.txt").exists()


def test_a_large_jsonl_on_s3_plans_the_same_blocks_as_on_disk(s3_bucket, tmp_path):
    """Planning reads the file in chunks: lines that cross a chunk (3 MiB of lines of varied length,
    no newline at the end) fall in the same blocks on S3 as on disk, at their true byte offsets."""
    from recipe import storage
    from recipe.stages.io.read import ReadStage

    lines = [json.dumps({"i": i, "pad": "x" * (i * 37 % 300)}).encode() for i in range(14000)]
    data = b"\n".join(lines)  # the last line has no newline
    local = tmp_path / "in.jsonl"
    local.write_bytes(data)
    remote = f"{s3_bucket}/in.jsonl"
    with storage.open_file(remote, "wb") as handle:
        handle.write(data)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    expected = [[s, min(starts[i + 1000], len(data)), i + 1] for i, s in enumerate(starts[:-1]) if i % 1000 == 0]
    for path in (str(local), remote):
        plan = ReadStage(path=path, partition_size=1000).plan()
        assert [where[1:] for _, where in plan] == expected
