"""The cache never stalls or kills a run (issue 10, section 8): off the event loop, bypassed when
it fails (locked, corrupt, disk full) and reported once, bounded by ``cache.max_gb``.

Real SQLite files, real locks held by another connection, a real file-size limit on a CLI
process, the stub server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sqlite3
import subprocess
from pathlib import Path

import pytest

import recipe
from conftest import cli as run_cli
from conftest import outputs, write_jsonl
from conftest import stub_overrides as overrides
from recipe.cache.sqlite import RequestCache
from recipe.clients.event_loop import run_sync
from recipe.clients.litellm_client import AsyncLiteLLMClient


def write_inputs(path: Path, n: int, size: int = 0) -> Path:
    return write_jsonl(path, [{"prompt": f"question {i} " + "x" * size} for i in range(n)])


def cli(tmp_path: Path, cache: Path, args: list[str], **run) -> subprocess.CompletedProcess:
    return run_cli(tmp_path, *args, env={"RECIPE_CACHE_DIR": str(cache)}, **run)


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_a_locked_cache_neither_stalls_the_loop_nor_fails_the_request(stub_server, tmp_path):
    server = stub_server()
    cache = RequestCache(tmp_path / "cache", busy_timeout=3)
    len(cache)  # create the file and its table
    holder = sqlite3.connect(cache.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    client = AsyncLiteLLMClient(provider="openai", api_base=server.base_url, api_key="k", cache=cache)

    async def query_while_ticking() -> tuple[list[str], int]:
        ticks = 0
        task = asyncio.ensure_future(client.query_model(messages=[{"role": "user", "content": "hello"}],
                                                        model="stub-model"))
        while not task.done():
            await asyncio.sleep(0.05)
            ticks += 1
        return task.result(), ticks

    try:
        answer, ticks = run_sync(query_while_ticking())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answer == ["echo: hello"], "the live answer, although the cache could not store it"
    assert ticks >= cache.busy_timeout / 0.05 / 2, "the loop kept running while the cache waited for the lock"
    assert client.stats.cache_errors == 1 and "locked" in client.stats.cache_error


def test_a_corrupt_cache_file_is_bypassed_and_reported_once(stub_server, tmp_path):
    server = stub_server()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "requests.sqlite").write_bytes(b"\x00garbage, not a database\x00" * 500)
    source = write_inputs(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out"
    done = cli(tmp_path, cache, overrides(server, f"input={source}", f"output_dir={out}", "dask.partition_size=4"))
    assert done.returncode == 0, done.stderr
    assert sorted(r["prompt"] for r in outputs(out)) == sorted(f"question {i} " for i in range(12))
    notes = [line for line in done.stderr.splitlines() if "request cache" in line]
    assert len(notes) == 1 and notes[0].startswith("note: request cache") and "bypassed" in notes[0], done.stderr
    assert json.loads((out / "stats.json").read_text())["cache_errors"] == 1
    assert server.stats()["requests"] == 12


def _small_files() -> None:  # in the CLI process: files may not grow beyond 64 KiB (a full disk)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_under_the_cache_falls_back_to_live_requests(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 60, size=2000)  # answers of 2 kB: the cache outgrows 64 KiB
    out = tmp_path / "out"
    done = cli(tmp_path, tmp_path / "cache", overrides(server, f"input={source}", f"output_dir={out}",
                                                        "dask.partition_size=5"),
               preexec_fn=_small_files)
    assert done.returncode == 0, done.stderr
    assert len(outputs(out)) == 60
    notes = [line for line in done.stderr.splitlines() if "request cache" in line]
    assert len(notes) == 1 and "bypassed" in notes[0], done.stderr


def test_max_gb_bounds_the_cache_least_recently_used_first(tmp_path):
    cache = RequestCache(tmp_path, max_bytes=200_000)
    answer = "y" * 5000
    for i in range(120):  # 600 kB of answers through a 200 kB cache
        cache.put({"q": i}, [f"{i} {answer}"])
        if i >= 1:
            assert cache.get({"q": 0}) == [f"0 {answer}"], "a recently used entry stays"
    assert cache.size_bytes() <= 200_000
    assert cache.path.stat().st_size <= 2 * 200_000, "freed pages go back to the disk"
    assert cache.get({"q": 1}) is None and cache.get({"q": 50}) is None, "the least recently used went first"
    assert cache.get({"q": 119}) == [f"119 {answer}"]
    kept = [i for i in range(120) if cache.get({"q": i}) is not None]
    assert 10 <= len(kept) <= 40 and kept[-1] == 119
    assert cache.corrupt == 0


def test_cache_max_gb_reaches_the_run(stub_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 150, size=2000)
    recipe.run(recipe.compose(overrides(server, f"input={source}", "cache.max_gb=0.0001")),  # 100 kB
               output_dir=str(tmp_path / "out"))
    cache = RequestCache(Path(os.environ["RECIPE_CACHE_DIR"]))
    assert 0 < len(cache) < 150
    assert cache.size_bytes() <= 100_000


def test_an_old_cache_file_gains_the_recency_column(tmp_path):
    """Caches written before ``max_gb`` existed keep serving their answers."""
    path = tmp_path / "requests.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, digest TEXT NOT NULL, value TEXT NOT NULL)")
    old = RequestCache(tmp_path)
    old.put({"q": 1}, ["kept"])
    assert RequestCache(tmp_path, max_bytes=10_000_000).get({"q": 1}) == ["kept"]


def test_threads_opening_a_fresh_cache_together_all_store(tmp_path):
    """Switching a new file to WAL took a lock SQLite does not wait for: one open in about twenty
    failed with "database is locked", and the run then bypassed its cache (a rerun paid again)."""
    import threading

    failures: list[BaseException] = []
    for trial in range(60):
        cache = RequestCache(tmp_path / str(trial))
        start = threading.Barrier(4)

        def store(i: int) -> None:
            start.wait()
            try:
                cache.put({"q": i}, [f"answer {i}"])
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [], f"trial {trial}: {failures[0]!r}"
        assert [cache.get({"q": i}) for i in range(4)] == [[f"answer {i}"] for i in range(4)]
