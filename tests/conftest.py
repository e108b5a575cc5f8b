"""Shared fixtures: the real llama.cpp server with SmolLM2, stub servers, isolated dirs."""

from __future__ import annotations


import pytest

from recipe.services.llamacpp_server import LlamaCppServer
from recipe.services.subprocess_server import ServerProcess, free_port
from recipe.testing.stub_server import StubServer


@pytest.fixture(scope="session")
def llama_server():
    """The embedded default model, started once for the whole test session."""
    with LlamaCppServer(n_ctx=2048) as server:
        yield server


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
    from recipe.factory import forget_clients

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
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(sched_file)], "dask scheduler", cwd=str(sched_dir), env=env)
        procs.append(scheduler)
        scheduler.start(sched_file.exists, timeout=60)
        address = json.loads(sched_file.read_text())["address"]
        for index in range(n_workers):
            workdir = Path(tmp_path / f"worker-{index}")
            workdir.mkdir()
            worker = ServerProcess(
                [dask_cli, "worker", address, "--host", "127.0.0.1", "--nthreads", str(nthreads),
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
