"""Shared fixtures: the real llama.cpp server with SmolLM2, stub servers, isolated dirs.

Also the shared helpers (import them with ``from conftest import ...``): the stub's backend
overrides, input files, a run's output and error records, and ``python -m recipe`` as a
subprocess that imports this checkout's package.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Dask's own monitoring, at intervals meant for a long-lived production cluster: a statistical
# profiler every 10 ms in each worker, an event-loop health check every 20 ms in every process, a
# memory check every 100 ms in each worker and nanny, a work-stealing pass every 100 ms.
# Idle, a 2-worker LocalCluster then costs ~5 CPU-s a minute (0.9 with these), and each test
# process keeps one for the session (two_workers): minutes of CPU on 2 cores. No test reads the
# profiles or the loop's health, or comes near a memory limit; memory checks and stealing still run,
# once a second. Set in the environment, so the CLI runs and their workers inherit it.
DASK_MONITORING = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                   "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
                   "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
                   "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "1s",
                   "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING_INTERVAL": "1s"}
for _name, _value in DASK_MONITORING.items():
    os.environ.setdefault(_name, _value)
if "dask" in sys.modules:
    sys.modules["dask"].config.refresh()

import recipe  # noqa: E402  (after the environment above)
from recipe.clients.llamacpp_server import LlamaCppServer  # noqa: E402
from recipe.clients.subprocess_server import ServerProcess, free_port  # noqa: E402
from recipe.testing import stub_server as stub_server_module  # noqa: E402
from recipe.testing.stub_server import StubServer  # noqa: E402

# ---- helpers ---------------------------------------------------------------------------------

SRC = str(Path(recipe.__file__).resolve().parents[1])  # the package under test, for subprocesses
# Four test processes share 2 cores: an embedded llama.cpp server started in this process (a run's
# start_local_server) gets one thread, as the CLI's do (cli_env).
os.environ.setdefault("RECIPE_LOCAL_THREADS", "1")


def stub_overrides(server, *extra: str) -> list[str]:
    """The overrides that point a run at a stub server (OpenAI's wire format, model ``stub-model``)."""
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            "model.name=stub-model", "progress=false", *extra]


def write_jsonl(path: Path, rows: list) -> Path:  # a Path: f"input={path}" is the override
    """One line per row: a dict as JSON, a string as it is (a deliberately bad line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def write_prompts(path: Path, n: int) -> Path:
    """``n`` records ``{"prompt": "question <i>"}``."""
    return write_jsonl(path, [{"prompt": f"question {i}"} for i in range(n)])


def outputs(directory: Path) -> list[dict]:
    """The records a run wrote (its ``part-*.jsonl`` files, in order)."""
    return [json.loads(line) for part in sorted(Path(directory).glob("part-*.jsonl"))
            for line in part.read_text().splitlines()]


def error_rows(directory: Path) -> list[dict]:
    """The error records a run wrote (``errors/*.jsonl``); none when there is no such folder."""
    return [json.loads(line) for part in sorted((Path(directory) / "errors").glob("*.jsonl"))
            for line in part.read_text().splitlines()]


def parts(directory: Path) -> tuple[list[dict], list[dict]]:
    """A run's records and its error records: ``(outputs(directory), error_rows(directory))``."""
    return outputs(directory), error_rows(directory)


def cli_env(tmp_path: Path, env: dict | None = None) -> dict[str, str]:
    """The CLI's environment: this test's cache and runs dirs, no API keys or HYDRA_FULL_ERROR
    from the caller, loopback unproxied, and the package under test first on PYTHONPATH (the
    Dask workers it starts inherit it)."""
    full = {k: v for k, v in os.environ.items() if k not in ("NVIDIA_API_KEY", "OPENAI_API_KEY", "HYDRA_FULL_ERROR")}
    full.update(RECIPE_RUNS_DIR=str(tmp_path / "runs"), RECIPE_CACHE_DIR=str(tmp_path / "cache"),
                NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                RECIPE_LOCAL_THREADS="1",  # four test processes share 2 cores: one llama.cpp thread each
                PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    full.update(env or {})
    return full


def _cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return cwd


def cli(tmp_path: Path, *args: str, timeout: float = 300, env: dict | None = None,
        check_exit: int | None = None, fresh: bool = False, input: str | None = None,
        cwd: Path | None = None, **popen) -> subprocess.CompletedProcess:
    """``python -m recipe *args`` to completion, in ``cwd`` (default: a scratch working directory,
    ``tmp_path/cwd``); ``check_exit`` asserts the exit code (showing stderr when it differs).

    The run is forked from a warm process that has imported everything already
    (:mod:`warm_cli`: the CLI's own code from ``main()`` down, in a process of its own, without
    2 to 4 s of imports each time); ``fresh=True``, ``RECIPE_TEST_FRESH_CLI=1`` or a ``subprocess``
    option (``preexec_fn=...``: a limit set before the interpreter starts) spawns a new one instead."""
    where = cwd or _cwd(tmp_path)
    if _spawn_fresh(fresh or bool(popen)):
        result = subprocess.run([sys.executable, "-m", "recipe", *args], cwd=where, env=cli_env(tmp_path, env),
                                capture_output=True, text=True, timeout=timeout, input=input, **popen)
    else:
        result = _warm().run(list(args), cwd=where, env=cli_env(tmp_path, env), timeout=timeout, input=input)
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr[-3000:]
    return result


def run_script(path: Path, *args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python PATH *args`` to completion (a bench script), forked from the warm process like
    :func:`cli`; ``RECIPE_TEST_FRESH_CLI=1`` starts a new interpreter."""
    if _spawn_fresh(False):
        return subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    return _warm().run(list(args), cwd=cwd, env=env, timeout=timeout, script=str(path))


def _spawn_fresh(asked: bool) -> bool:
    """Whether to start a new interpreter instead of forking from the warm process: the test asks
    for one, or ``RECIPE_TEST_FRESH_CLI=1`` asks it for every process."""
    return asked or bool(os.environ.get("RECIPE_TEST_FRESH_CLI"))


_WARM: list = []  # this test process's warm CLI (one, started on first use)


def _warm():
    from warm_cli import WarmCli

    if _WARM and not _WARM[0].alive():
        _WARM.pop()
    if not _WARM:
        base = {k: v for k, v in os.environ.items() if k not in ("NVIDIA_API_KEY", "OPENAI_API_KEY")}
        base["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
        _WARM.append(WarmCli(base))
    return _WARM[0]


def _warm_popen(args, **kwargs):
    """The stub servers' launcher (``recipe.testing.stub_server.popen``): forked from the warm
    process, which has imported aiohttp and the stub (a new interpreter costs ~0.4 s of CPU, and
    the suite starts several hundred stubs); ``RECIPE_TEST_FRESH_CLI=1`` spawns them as well."""
    if _spawn_fresh(False):
        return subprocess.Popen(args, **kwargs)
    return _warm().popen(args, **kwargs)


stub_server_module.popen = _warm_popen


def pytest_unconfigure(config):
    for warm in _WARM:
        warm.stop()


def cli_process(tmp_path: Path, *args: str, env: dict | None = None, fresh: bool = False, **popen):
    """``python -m recipe *args`` started (for signals and kills): pipes for stdout and stderr.

    Forked from the warm process (:class:`warm_cli.WarmChild`: ``pid``, ``poll``, ``wait``,
    ``communicate``, signals; the leader of its own process group, as ``start_new_session=True``
    makes it). ``fresh=True``, ``RECIPE_TEST_FRESH_CLI=1`` or another ``subprocess`` option
    (``preexec_fn``...) spawns a new interpreter."""
    command = [sys.executable, "-m", "recipe", *args]
    options = dict(cwd=_cwd(tmp_path), env=cli_env(tmp_path, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    if _spawn_fresh(fresh or bool(set(popen) - {"start_new_session"})):
        return subprocess.Popen(command, **options, **popen)
    return _warm().popen(command, **options)


# ---- tiers -----------------------------------------------------------------------------------
#
# ``pytest -m "not slow"`` is the fast tier. A test is slow when it is marked so, or when it starts
# what costs seconds on a 2-core machine: the embedded model (``llm``), a ``python -m recipe``
# process, a whole run (``recipe.run`` and the tests' wrappers around it), or a Dask cluster. A test
# marked ``smoke`` stays in the fast tier whatever it starts (the CLI's own smoke tests).

_SLOW_CALLS = re.compile(r"(?<![\w.])(cli|cli_process|run_cli|run_script|run_recipe|stub_recipe|_stub_run|_run)\(|\brecipe\.run\("
                         r"|\bsubprocess\.(run|Popen)\(")
_SLOW_FIXTURES = {"llama_server", "two_workers", "dask_processes"}


def _starts_something_slow(item) -> bool:
    if item.get_closest_marker("llm") is not None or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return _SLOW_CALLS.search(source) is not None


# The files whose tests take longest, longest first (each file alone, serial, on this machine,
# 2026-12-06: 210 s down to 37 s; the bare install first among equals, as pip is slow under load),
# scheduled first (pyproject: --no-loadscope-reorder), so the four test processes end together
# instead of one running a long file alone at the end. The others follow, most tests first.
LONG_FILES = ("test_recipes.py", "test_bare_install.py", "test_wire_answers.py", "test_bench.py", "test_reasoning.py",
              "test_interrupts.py", "test_fleet.py", "test_docs.py", "test_spend.py", "test_report.py",
              "test_sample.py", "test_storage.py", "test_hostile.py", "test_designer.py", "test_durability.py",
              "test_cluster.py", "test_redis_cache.py", "test_resume.py", "test_validate.py", "test_stages.py",
              "test_fallbacks.py", "test_keys_off_wire.py", "test_batch_resume.py")


def _schedule_order(items) -> None:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.path.name] = counts.get(item.path.name, 0) + 1

    def key(item) -> tuple[int, int, str]:
        name = item.path.name
        rank = LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)
        return rank, -counts[name], name

    items.sort(key=key)  # stable: a file's tests keep their order


def pytest_collection_modifyitems(config, items):
    _schedule_order(items)
    for item in items:
        if item.get_closest_marker("slow") is None and item.get_closest_marker("smoke") is None \
                and _starts_something_slow(item):
            item.add_marker(pytest.mark.slow)


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_server():
    """The embedded default model, started once for the whole test session."""
    with LlamaCppServer(n_ctx=2048, n_threads=1) as server:  # four test processes share 2 cores
        yield server


@pytest.fixture(scope="session")
def two_workers():
    """A LocalCluster of two worker processes on 127.0.0.1, started once for the session (each
    start costs two imports of litellm); tests that need "a two-worker cluster" but not fresh
    processes pass ``dask.address=<this>``. Yields the scheduler's address."""
    import asyncio
    import contextlib

    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                           dashboard_address=None, scheduler_kwargs={"dashboard": False})
    try:
        yield cluster.scheduler_address
    finally:
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):  # a loaded machine: slow to exit
            cluster.close(timeout=60)


@pytest.fixture
def stub_server():
    """A factory of OpenAI-compatible stub servers on 127.0.0.1, stopped after the test."""
    servers: list[StubServer] = []

    def start(**options) -> StubServer:
        server = StubServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own request cache and run dir, never the user's."""
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))
    yield


@pytest.fixture(autouse=True)
def fresh_clients():
    """Clients are shared per process; tests start from none."""
    from recipe.clients.factory import forget_clients

    forget_clients()
    yield
    forget_clients()


# ---- scale-out services: separate Dask processes, Redis, an S3-compatible server -------------

@pytest.fixture
def dask_processes(tmp_path):
    """A factory: ``start(n_workers, env)`` runs ``dask scheduler`` and ``n_workers`` separate
    ``dask worker`` processes, each in its own temporary working directory, on 127.0.0.1, and
    returns the scheduler's address. All are stopped after the test."""
    import json
    import os
    import shutil
    import sys
    from pathlib import Path

    dask_cli = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
    procs: list[ServerProcess] = []

    def start(n_workers: int = 2, env: dict | None = None, nthreads: int = 1) -> str:
        env = {**os.environ, **(env or {})}
        sched_file = tmp_path / "scheduler.json"
        sched_dir = tmp_path / "scheduler"
        sched_dir.mkdir()
        scheduler = ServerProcess(
            # no dashboard: no test reads it here, and it is half the scheduler's start-up CPU
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)], "dask scheduler", cwd=str(sched_dir), env=env)
        procs.append(scheduler)
        scheduler.start(sched_file.exists, timeout=60)
        address = json.loads(sched_file.read_text())["address"]
        for index in range(n_workers):
            workdir = Path(tmp_path / f"worker-{index}")
            workdir.mkdir()
            worker = ServerProcess(
                # --no-nanny: the worker runs in this process, not in one more the nanny would spawn
                [dask_cli, "worker", address, "--host", "127.0.0.1", "--nthreads", str(nthreads), "--no-nanny",
                 "--no-dashboard", "--local-directory", str(workdir), "--name", f"w{index}"],
                f"dask worker {index}", cwd=str(workdir), env=env)
            procs.append(worker)
            worker.start()  # Client.wait_for_workers below waits for all of them
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
        return address

    yield start
    for proc in reversed(procs):
        proc.terminate()  # all at once, then each is waited for
    for proc in procs:
        proc.stop(grace=15)


@pytest.fixture
def redis_server(tmp_path):
    """A real ``redis-server`` on 127.0.0.1 (random port, no persistence); yields its URL."""
    import shutil

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
    port = free_port()
    server = ServerProcess([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                            "--dir", str(tmp_path)], "redis-server")
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    server.start(up, timeout=30)
    try:
        yield url
    finally:
        server.stop(grace=10)


@pytest.fixture
def s3_bucket(monkeypatch):
    """moto's S3-compatible server on 127.0.0.1 (random port) and an empty bucket; yields ``s3://bucket``.

    The endpoint and dummy credentials go into the environment, where s3fs finds them (as it
    would find real ones), so subprocesses and Dask workers started by the test reach it too.
    """
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import urllib.request

    # moto keeps its state per process, across servers: start from an empty store
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", data=b"", method="POST")
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(reset, timeout=30).read()
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would still point at another server
    s3fs.S3FileSystem().mkdir("bucket")
    try:
        yield "s3://bucket"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
