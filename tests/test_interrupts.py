"""Interrupted runs stop cleanly and no process outlives its run (issue 10, sections 5 and 6).

Real processes throughout: the CLI as a subprocess, real signals, the stub server, real
llama.cpp, real Dask worker processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import recipe
from conftest import cli_process, error_rows, outputs, write_prompts
from conftest import stub_overrides as overrides


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_leftovers():
    """A failing test must not leave its CLI (and what it started) running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.communicate()


def cli(tmp_path: Path, args: list[str], **popen) -> subprocess.Popen:
    # a new interpreter: how the CLI takes signals is what these tests are about, from its start
    proc = cli_process(tmp_path, *args, fresh=True, **popen)
    _started.append(proc)  # killed after the test, with what it started, if still running
    return proc


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int, needle: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if needle in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# ---- section 5: Ctrl-C and SIGTERM -----------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_records_no_false_errors_and_the_rerun_completes_once(stub_server, tmp_path, signum):
    server = stub_server(latency=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 120)
    out = tmp_path / "out"
    args = overrides(server, f"input={source}", f"output_dir={out}", "backend.max_concurrency=8",
                     "dask.partition_size=10")
    proc = cli(tmp_path, args)
    wait_for(lambda: server.stats()["status_counts"].get("200", 0) >= 30, 120, "30 answers")
    signalled_at = time.time()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [
        f"error: interrupted ({signum.name}); what was committed is kept: run the same command again to resume"]
    assert not error_rows(out), "an interrupted request is never recorded as a failure"
    committed = {r["prompt"] for r in outputs(out)}
    stats = server.stats()
    answered = stats["status_counts"].get("200", 0)
    started_late = sum(t > signalled_at for t in stats["arrivals"])  # a loaded core may let a few through
    assert len(committed) < 120, "the signal must land part-way"

    server.reset()
    rerun = cli(tmp_path, args)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    rows = outputs(out)
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(120)), "every record once"
    assert not error_rows(out)
    stats = server.stats()
    asked_again = {b["messages"][-1]["content"] for b in stats["bodies"]}
    assert not asked_again & committed, "a committed record is never asked again"
    resent = stats["requests"] - (120 - answered)
    assert resent <= 8 + started_late, (f"{resent} answered requests were paid again: at most the 8 in flight "
                                        f"at the signal, and the {started_late} started after it, may be")


def test_ctrl_c_from_a_terminal_stops_a_two_worker_cluster_cleanly(stub_server, tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group, Dask workers included."""
    server = stub_server(latency=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out"
    args = overrides(server, f"input={source}", f"output_dir={out}", "backend.max_concurrency=8",
                     "dask.partition_size=10", "dask.n_workers=2", "dask.threads_per_worker=1")
    proc = cli(tmp_path, args, start_new_session=True)
    wait_for(lambda: server.stats()["status_counts"].get("200", 0) >= 20, 180, "20 answers")
    workers = descendants(proc.pid, "multiprocessing")
    assert workers, "the cluster runs worker processes"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert not error_rows(out), "an interrupted request is never recorded as a failure"
    wait_for(lambda: not any(alive(w) for w in workers), 30, "the workers to exit")


# ---- section 6: no process outlives its run --------------------------------------------------

def _server_of(proc: subprocess.Popen) -> psutil.Process:
    return wait_for(lambda: (descendants(proc.pid, "--model_alias") or [None])[0], 120, "the llama.cpp server")


def _answers(server: psutil.Process) -> bool:
    import urllib.request

    for conn in server.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{conn.laddr.port}/v1/models", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
    return False


@pytest.mark.llm
def test_the_embedded_server_dies_with_a_kill_9_of_the_cli_alone(tmp_path):
    source = write_prompts(tmp_path / "in.jsonl", 40)
    proc = cli(tmp_path, ["progress=false", f"input={source}", f"output_dir={tmp_path / 'out'}",
                          "sampling.max_tokens=32"])
    server = _server_of(proc)
    wait_for(lambda: _answers(server), 120, "the server to answer")
    separate_group = os.getpgid(server.pid) != os.getpgid(proc.pid)
    proc.kill()  # the CLI alone, not its process group
    proc.communicate()
    try:
        wait_for(lambda: not alive(server), 10, "the server to die with the CLI")
    finally:
        if alive(server):
            server.kill()
    assert separate_group, "the server runs in its own process group (a terminal's Ctrl-C reaches it once, via us)"


@pytest.mark.llm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_embedded_server_dies_on_a_signal_during_its_start_up(tmp_path, signum):
    proc = cli(tmp_path, ["progress=false", f"output_dir={tmp_path / 'out'}", "sampling.max_tokens=8"])
    server = _server_of(proc)  # started, not yet answering
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    try:
        wait_for(lambda: not alive(server), 10, "the server to stop")
    finally:
        if alive(server):
            server.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_a_server_that_cannot_start_is_one_line(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    proc = cli(tmp_path, ["progress=false", f"output_dir={tmp_path / 'out'}", f"backend.model_path={bad}"])
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the llama.cpp server was killed by SIGABRT while starting"), stderr


def test_dask_workers_are_gone_within_30_s_of_a_kill_9_of_the_cli(stub_server, tmp_path):
    server = stub_server(latency=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 200)
    proc = cli(tmp_path, overrides(server, f"input={source}", f"output_dir={tmp_path / 'out'}",
                                   "dask.n_workers=2", "dask.partition_size=10"))
    wait_for(lambda: server.stats()["requests"] >= 10, 180, "the workers to send requests")
    workers = descendants(proc.pid, "multiprocessing")
    assert len(workers) >= 2
    proc.kill()
    proc.communicate()
    wait_for(lambda: not any(alive(w) for w in workers), 30, "the worker processes to exit")


def test_a_finished_run_leaves_a_long_lived_scheduler_alone(stub_server, tmp_path):
    """The cluster limiter's refresh task ends with the run: no more calls to the scheduler."""
    from distributed import Client, LocalCluster

    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 20)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = recipe.run(recipe.compose(overrides(server, f"input={source}", f"dask.address={cluster.scheduler_address}",
                                                      "dask.partition_size=5")),
                             output_dir=str(tmp_path / "out"))
        assert summary.records == 20

        time.sleep(1.5)  # more than a refresh period
        assert list(client.run(_refresh_tasks).values()) == [0]


def _refresh_tasks() -> int:
    """Cluster-limiter refresh tasks still alive on this worker's event loop."""
    import asyncio

    from recipe.clients.event_loop import get_loop

    async def count() -> int:
        return sum("_refresh_forever" in repr(task.get_coro()) for task in asyncio.all_tasks() if not task.done())

    return asyncio.run_coroutine_threadsafe(count(), get_loop()).result()


@pytest.mark.llm
def test_an_embedded_server_that_dies_mid_run_stops_the_run_with_one_line_and_the_fix(tmp_path):
    """A llama.cpp wheel built natively on another CPU dies with SIGILL on the first prompt. The run
    stops at once with one line naming the signal and the rebuild command, instead of retrying every
    record against a closed port and ending as "N records failed" (exit 3)."""
    source = write_prompts(tmp_path / "in.jsonl", 200)
    proc = cli(tmp_path, ["progress=false", f"input={source}", f"output_dir={tmp_path / 'out'}",
                          "sampling.max_tokens=32"])
    server = _server_of(proc)
    wait_for(lambda: _answers(server), 120, "the server to answer")
    os.kill(server.pid, signal.SIGILL)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert time.monotonic() - started < 30, "no retries against a dead server"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    # killed mid-run, or (the test saw an answer before the run did) while the run was starting it
    assert re.match(r"error: the (embedded llama\.cpp server was killed by SIGILL: "
                    r"|llama\.cpp server was killed by SIGILL while starting: )", lines[0]), stderr
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir --force-reinstall llama-cpp-python==' in lines[0]
