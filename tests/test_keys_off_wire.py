"""Keys stay off the wire: a run's task graph carries the key's variable name, never its value."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
from pathlib import Path

import cloudpickle
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import recipe
from recipe.config.env_keys import EnvKey
from recipe.errors import ConfigError

SECRET = "sk-wire-4f1c9a7e2b"
VAR = "RECIPE_TEST_WIRE_KEY"


class TaskRecorder(SchedulerPlugin):
    """Scheduler side: keeps each task's run_spec pickled as the scheduler sends it to workers."""

    name = "task-recorder"

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def update_graph(self, scheduler, *, tasks, **kwargs) -> None:
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.run_spec is not None:
                self.blobs.append(cloudpickle.dumps(ts.run_spec))


def _recorded(dask_scheduler) -> list[bytes]:
    return dask_scheduler.plugins[TaskRecorder.name].blobs


def write_inputs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


@contextlib.contextmanager
def local_cluster(n_workers: int):
    local = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    try:
        yield local
    finally:
        # On a loaded machine a worker may take longer than the nanny's 5 s to exit; it is killed
        # anyway, and the test's assertions are already made.
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            local.close(timeout=60)


@pytest.fixture
def cluster(monkeypatch):
    """Two worker processes started while the variable is set: they hold it in their environment."""
    monkeypatch.setenv(VAR, SECRET)
    with local_cluster(2) as local, Client(local) as client:
        client.register_plugin(TaskRecorder(), name=TaskRecorder.name)
        yield local, client


def _overrides(server, cluster_address: str, source: Path, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", f"backend.api_key=${{oc.env:{VAR}}}",
            "model.name=stub-model", "progress=false", "cache.enabled=false", f"input={source}",
            "dask.partition_size=4", f"dask.address={cluster_address}", *extra]


@pytest.mark.parametrize("ship_key", [False, True])
def test_no_pickled_task_of_a_run_holds_the_key(stub_server, tmp_path, cluster, ship_key):
    local, client = cluster
    server = stub_server(api_key=SECRET)  # the stub refuses any other key: the workers must find it
    source = write_inputs(tmp_path / "in.jsonl", 12)
    cfg = recipe.compose(_overrides(server, local.scheduler_address, source, f"backend.ship_key={ship_key}"))
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert (summary.records, summary.failed) == (12, 0)
    assert server.stats()["status_counts"] == {"200": 12}
    blobs = client.run_on_scheduler(_recorded)
    assert len(blobs) >= 6, "the recorder saw the run's tasks"  # read, generate and write of 3 partitions
    holding = [b for b in blobs if SECRET.encode() in b]
    if ship_key:  # the explicit opt-in: the driver's key rides in the graph (and the check can see it)
        assert holding
    else:
        assert holding == []
        assert any(VAR.encode() in b for b in blobs), "the graph names the variable instead"


def test_workers_read_the_key_from_their_own_environment(stub_server, tmp_path, cluster, monkeypatch):
    local, client = cluster
    server = stub_server(api_key=SECRET)
    source = write_inputs(tmp_path / "in.jsonl", 8)
    cfg = recipe.compose(_overrides(server, local.scheduler_address, source))
    monkeypatch.delenv(VAR)  # the driver no longer has it; the workers still do
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert (summary.records, summary.failed) == (8, 0)


def test_a_worker_without_the_variable_stops_the_run_naming_it(stub_server, tmp_path, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    server = stub_server(api_key=SECRET)
    source = write_inputs(tmp_path / "in.jsonl", 4)
    with local_cluster(1) as local:
        cfg = recipe.compose(_overrides(server, local.scheduler_address, source))
        with pytest.raises(ConfigError) as info:
            recipe.run(cfg, output_dir=str(tmp_path / "out"))
    message = str(info.value)
    assert VAR in message and "on Dask worker tcp://127.0.0.1:" in message and "ship_key" in message
    assert server.stats()["requests"] == 0


def test_a_spec_pickles_without_the_key(monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", SECRET)
    spec = recipe.ClientSpec.from_config(recipe.compose(["+model=nemotron"]))
    assert spec.api_key == EnvKey("NVIDIA_API_KEY")
    assert SECRET.encode() not in pickle.dumps(spec) and SECRET.encode() not in cloudpickle.dumps(spec)
    assert spec.client_kwargs()["api_key"] == SECRET  # resolved where the client is built
    shipped = recipe.ClientSpec.from_config(recipe.compose(["+model=nemotron", "backend.ship_key=true"]))
    assert shipped.api_key == SECRET


def test_a_key_default_travels_as_the_configs_literal(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    spec = recipe.ClientSpec.from_config(recipe.compose(["backend=vllm"]))
    assert spec.api_key == EnvKey("VLLM_API_KEY", "EMPTY") and spec.client_kwargs()["api_key"] == "EMPTY"


def test_a_key_that_cannot_travel_by_name_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("A_KEY", SECRET)
    cfg = recipe.compose(["backend=openai", "backend.api_key=prefix-${oc.env:A_KEY}"])
    with pytest.raises(ConfigError) as info:
        recipe.ClientSpec.from_config(cfg)
    assert "backend.api_key" in str(info.value) and "ship_key" in str(info.value) and SECRET not in str(info.value)
