"""Running on a cluster: an existing scheduler with separate `dask worker` processes, and the dashboard."""

from __future__ import annotations

import json
import os
import time
import urllib.request

from distributed import Client

from conftest import cli_process, outputs, write_prompts

SECRET = "sk-cluster-93d1e0"
VAR = "RECIPE_TEST_CLUSTER_KEY"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def stub_overrides(server, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "model.name=stub-model", "progress=false",
            *extra]


def test_run_on_an_existing_scheduler_with_separate_worker_processes(stub_server, dask_processes, tmp_path):
    server = stub_server(latency=0.2, api_key=SECRET)
    # The workers hold the key; the driver does not: keys are resolved where the client is built.
    address = dask_processes(n_workers=2, env={VAR: SECRET})
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    source = write_prompts(driver_dir / "in.jsonl", 40)
    out = tmp_path / "out"  # one disk here: the parts are written by the workers, read by the test
    assert VAR not in os.environ  # the driver's environment lacks the key (cli_env copies this one)
    proc = cli_process(driver_dir, *stub_overrides(server, f"input={source}", f"backend.api_key=${{oc.env:{VAR}}}",
                                                   "backend.max_concurrency=3", "dask.partition_size=5",
                                                   f"dask.address={address}", f"output_dir={out}"))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    rows = outputs(out)
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(40))
    stats = server.stats()
    assert stats["status_counts"] == {"200": 40}
    assert stats["max_in_flight"] <= 3, "max_concurrency holds across the two worker processes"
    with Client(address) as client:  # the workers outlive the run: ask each what it sent
        sent = client.run(lambda: __import__("recipe.clients.factory").clients.factory.process_stats().as_dict()["requests"])
    assert sum(sent.values()) == 40 and all(n > 0 for n in sent.values()), sent
    summary = json.loads((out / "stats.json").read_text())
    assert summary["records"] == 40 and summary["requests"] == 40
    assert "40 records, 0 failed" in stdout


def test_a_worker_lacking_the_key_is_one_error_line(stub_server, dask_processes, tmp_path):
    server = stub_server(api_key=SECRET)
    address = dask_processes(n_workers=1, env={})
    source = write_prompts(tmp_path / "in.jsonl", 4)
    assert VAR not in os.environ
    proc = cli_process(tmp_path, *stub_overrides(server, f"input={source}", f"backend.api_key=${{oc.env:{VAR}}}",
                                                 f"dask.address={address}", f"output_dir={tmp_path / 'out'}"))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and VAR in lines[0] and "Dask worker" in lines[0], stderr
    assert "Traceback" not in stderr
    assert server.stats()["requests"] == 0


def test_dashboard_prints_its_address_and_shows_stages_by_name(stub_server, tmp_path):
    server = stub_server(latency=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 24)
    proc = cli_process(tmp_path, *stub_overrides(server, f"input={source}", "backend.api_key=none",
                                                 "backend.max_concurrency=2", "dask.n_workers=1", "dask.dashboard=true",
                                                 "dask.partition_size=4", f"output_dir={tmp_path / 'out'}"))
    link = None
    deadline = time.monotonic() + 120
    while link is None and time.monotonic() < deadline:
        line = proc.stderr.readline().decode()  # the warm child's pipes are binary, as Popen's without text=True
        if not line:
            break
        if line.startswith("dashboard: "):
            link = line.split(" ", 1)[1].strip()
    assert link is not None and link.startswith("http://127.0.0.1:") and link.endswith("/status"), link
    with _NO_PROXY.open(link, timeout=30) as page:
        assert page.status == 200 and "bokeh" in page.read().decode().lower()
    root = link.rsplit("/status", 1)[0]
    with _NO_PROXY.open(f"{root}/json/identity.json", timeout=30) as page:
        scheduler = json.loads(page.read())["address"]
    prefixes: set = set()
    with Client(scheduler, timeout=30) as client:
        while proc.poll() is None and not {"generate", "write"} <= prefixes:
            prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
            time.sleep(0.2)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest
    assert {"read", "generate", "write"} <= prefixes, f"task groups in the dashboard: {sorted(prefixes)}"
