"""A self-hosted fleet without tuning: ``max_concurrency: auto`` and ``api_base: [URL, ...]`` (issue 26).

Real stub servers on 127.0.0.1 in their queueing mode (``recipe.testing.queueing``: at most C
served at once, the rest wait), real runs through the CLI, a replica killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from conftest import SRC, cli, cli_process, error_rows, outputs, stub_overrides, write_prompts

from recipe.clients.limits import Pacer
from recipe.clients.litellm_client import AsyncLiteLLMClient
from recipe.testing.queueing import queue_args, queue_stats, set_capacity


def _output_dir(result) -> Path:
    return Path(next(line for line in result.stdout.splitlines() if line.startswith("output: ")).removeprefix("output: "))


def _replicas_overrides(servers, *extra: str) -> list[str]:
    urls = ",".join(s.base_url for s in servers)
    return [o if not o.startswith("backend.api_base=") else f"backend.api_base=[{urls}]"
            for o in stub_overrides(servers[0], *extra)]


# ---- 1. backend.max_concurrency: auto --------------------------------------------------------

def test_bad_max_concurrency_is_one_error_line(tmp_path, stub_server):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    for bad in ("lots", "0", "auto:0"):
        result = cli(tmp_path, *stub_overrides(server, f"input={source}", f"backend.max_concurrency={bad}"))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "backend.max_concurrency" in lines[0], lines
        assert "auto" in lines[0]
    assert server.stats()["requests"] == 0


def test_auto_saturates_a_queueing_server_without_piling_up_a_queue(tmp_path, stub_server):
    """Capacity 8, 100 ms each; 400 records all available at once. The ceiling (256) would put 256
    in flight; auto must find the capacity: the server busy at its 8, little waiting in front."""
    server = stub_server(extra_args=tuple(queue_args(8, 100)))
    source = write_prompts(tmp_path / "in.jsonl", 400)
    result = cli(tmp_path, *stub_overrides(server, f"input={source}", "backend.max_concurrency=auto",
                                          "dask.partition_size=400"), check_exit=0)
    out = _output_dir(result)
    assert len(outputs(out)) == 400
    queue = queue_stats(server.port)
    assert queue["max_in_service"] == 8, "the server was saturated"
    assert server.stats()["max_in_flight"] <= 3 * 8, f"a queue piled up: {server.stats()['max_in_flight']} in flight"
    stats = json.loads((out / "stats.json").read_text())
    replica = stats["replicas"][server.base_url]
    assert replica["requests"] == server.stats()["requests"] == 400
    assert 0.09 <= replica["latency_p50"] <= 0.2, replica  # 100 ms of service plus a short queue


def test_auto_follows_when_the_capacity_halves(stub_server):
    """The limit settles near 16 and, once the server can serve only 8, follows it down."""
    server = stub_server(extra_args=tuple(queue_args(16, 100)))

    async def scenario() -> tuple[int, int]:
        client = AsyncLiteLLMClient(provider="openai", api_base=server.base_url, api_key="k", max_concurrency=256,
                                    adaptive_concurrency=True)
        stop = False
        await client.query_model(messages=[{"role": "user", "content": "warm up"}], model="m")  # imports litellm

        async def driver(i: int) -> None:
            n = 0
            while not stop:
                n += 1
                await client.query_model(messages=[{"role": "user", "content": f"{i} {n}"}], model="m")

        tasks = [asyncio.create_task(driver(i)) for i in range(120)]
        await asyncio.sleep(6)
        before = client.limiter.concurrency
        await asyncio.to_thread(set_capacity, server.port, 8)
        await asyncio.sleep(6)
        after = client.limiter.concurrency
        stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return before, after

    before, after = asyncio.run(scenario())
    assert 14 <= before <= 32, f"limit {before} at capacity 16"
    assert after <= 15 and after < before, f"limit {after} after the capacity fell to 8 (was {before})"


def test_auto_halves_on_429_once_per_round_trip_as_aimd_does():
    pacer = Pacer(64, adaptive=True)
    now = 0.0
    for i in range(200):  # flat latency: slow start doubles the limit per round trip
        now += 0.01
        pacer.success(0.1, int(pacer.concurrency), now)
    raised = pacer.concurrency
    assert raised == 64, "flat latency raises the limit to the ceiling"
    pacer.rate_limited(None, now=now + 0.01, started_at=now)
    assert pacer.concurrency == raised // 2
    pacer.rate_limited(None, now=now + 0.02, started_at=now - 0.5)  # in flight before the decrease
    assert pacer.concurrency == raised // 2


def test_auto_on_a_throttling_server_loses_no_record(tmp_path, stub_server):
    server = stub_server(latency=0.02, throttle_above=6, retry_after=0)
    source = write_prompts(tmp_path / "in.jsonl", 120)
    result = cli(tmp_path, *stub_overrides(server, f"input={source}", "backend.max_concurrency=auto",
                                          "backend.num_retries=20", "dask.partition_size=120"), check_exit=0)
    out = _output_dir(result)
    assert sorted(r["prompt"] for r in outputs(out)) == sorted(f"question {i}" for i in range(120))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rate_limited_429"] == server.stats()["status_counts"].get("429", 0) > 0


def test_auto_holds_one_limit_for_a_two_worker_cluster(tmp_path, stub_server, two_workers):
    server = stub_server(extra_args=tuple(queue_args(8, 100)))
    source = write_prompts(tmp_path / "in.jsonl", 400)
    result = cli(tmp_path, *stub_overrides(server, f"input={source}", "backend.max_concurrency=auto",
                                          "dask.partition_size=100", f"dask.address={two_workers}"), check_exit=0)
    assert len(outputs(_output_dir(result))) == 400
    assert queue_stats(server.port)["max_in_service"] == 8
    assert server.stats()["max_in_flight"] <= 3 * 8, server.stats()["max_in_flight"]
    from distributed import Client

    from types import SimpleNamespace

    from recipe.clients.cluster_limits import limits_key

    key = limits_key(SimpleNamespace(provider="openai", api_base=server.base_url, model="stub-model"))

    def adaptive_limit(dask_scheduler=None) -> tuple | None:
        plugin = dask_scheduler.plugins.get("recipe-limits")
        pacer = getattr(plugin, "pacers", {}).get(key)
        return None if pacer is None or pacer.adaptive is None else (pacer.adaptive.rtt_noload, pacer.concurrency)

    with Client(two_workers) as client:
        held = client.run_on_scheduler(adaptive_limit)
    # the scheduler's one limit learned from both workers' samples: 100 ms no-load, settled near 8
    assert held is not None, "no adaptive limit on the scheduler"
    noload, limit = held
    assert 0.09 <= noload <= 0.15 and 8 <= limit <= 24, held


# ---- 2. replicas ---------------------------------------------------------------------------

def test_bad_replica_list_is_one_error_line(tmp_path, stub_server):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    for bad, named in (("[]", "backend.api_base=[]"), (f"[{server.base_url},nowhere]", "backend.api_base[1]")):
        result = cli(tmp_path, *stub_overrides(server, f"input={source}"), f"backend.api_base={bad}")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert named in lines[0], lines
    assert server.stats()["requests"] == 0


def test_a_replica_killed_mid_run_loses_no_record_and_none_twice(tmp_path, stub_server):
    servers = [stub_server(extra_args=tuple(queue_args(c, 100))) for c in (4, 8, 8)]
    victim = servers[2]
    source = write_prompts(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out"
    proc = cli_process(tmp_path, *_replicas_overrides(servers, f"input={source}", "backend.max_concurrency=8",
                                                      "dask.partition_size=50", f"output_dir={out}"))
    deadline = time.monotonic() + 60
    while victim.stats()["requests"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    served_by_victim = victim.stats()["requests"]
    os.kill(victim.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    prompts = [r["prompt"] for r in outputs(out)]
    assert sorted(prompts) == sorted(f"question {i}" for i in range(300)), "every record exactly once"
    assert error_rows(out) == []
    stats = json.loads((out / "stats.json").read_text())
    by_url = stats["replicas"]
    assert set(by_url) == {s.base_url for s in servers}
    for server in servers[:2]:
        assert by_url[server.base_url]["requests"] == server.stats()["requests"] > 0
        assert by_url[server.base_url]["latency_p50"] >= 0.1
    assert by_url[victim.base_url]["requests"] >= served_by_victim
    assert by_url[victim.base_url]["errors"] >= 1, "the killed replica's failures are counted"
    assert sum(r["requests"] for r in by_url.values()) == stats["requests"]


def test_each_replicas_fixed_limit_holds_for_a_two_worker_cluster(tmp_path, stub_server, two_workers):
    """max_concurrency=4 is each replica's limit for the whole cluster, not per worker: both
    workers, two partitions each, all sending at once, and no replica ever has more than 4."""
    servers = [stub_server(extra_args=tuple(queue_args(32, 100))) for _ in range(2)]
    source = write_prompts(tmp_path / "in.jsonl", 320)
    result = cli(tmp_path, *_replicas_overrides(servers, f"input={source}", "backend.max_concurrency=4",
                                               "dask.partition_size=80", f"dask.address={two_workers}"),
                 check_exit=0)
    assert len(outputs(_output_dir(result))) == 320
    peaks = [s.stats()["max_in_flight"] for s in servers]
    assert sum(s.stats()["requests"] for s in servers) == 320
    assert max(peaks) <= 4, f"a replica had {peaks} in flight at once under a limit of 4"
    assert min(peaks) >= 2, f"both replicas were used: {peaks}"


def test_least_outstanding_routing_gives_a_bigger_replica_more(tmp_path, stub_server):
    small, big = (stub_server(extra_args=tuple(queue_args(c, 100))) for c in (2, 12))
    source = write_prompts(tmp_path / "in.jsonl", 200)
    cli(tmp_path, *_replicas_overrides([small, big], f"input={source}", "backend.max_concurrency=auto:32",
                                       "dask.partition_size=200"), check_exit=0)
    served = small.stats()["requests"], big.stats()["requests"]
    assert sum(served) == 200
    assert served[1] > 3 * served[0], f"small {served[0]}, big {served[1]}"


def test_run_identity_and_cache_do_not_depend_on_the_replica_list(tmp_path, stub_server):
    a, b, c = stub_server(), stub_server(), stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 6)
    first = cli(tmp_path, *_replicas_overrides([a, b], f"input={source}"), check_exit=0)
    sent_to_a = a.stats()["requests"]
    assert sent_to_a + b.stats()["requests"] == 6
    b.stop()
    again = cli(tmp_path, *_replicas_overrides([a, c], f"input={source}"), check_exit=0)
    assert _output_dir(again) == _output_dir(first), "a replica swapped: the same run continues"
    elsewhere = cli(tmp_path, *_replicas_overrides([c], f"input={source}", f"output_dir={tmp_path / 'other'}"),
                    check_exit=0)
    stats = json.loads((_output_dir(elsewhere) / "stats.json").read_text())
    assert stats["cache_hits"] == 6 and stats["requests"] == 0
    assert (a.stats()["requests"], c.stats()["requests"]) == (sent_to_a, 0), "nothing was sent again"


# ---- 3. metrics ----------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict | None:
    """The endpoint's samples as {(name, labels...): value}, or None while it is not up."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError):
        return None
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_scraped_during_a_run_and_agree_with_stats_json(tmp_path, stub_server):
    servers = [stub_server(latency=0.1, usage=(7, 3)), stub_server(latency=0.1, usage=(7, 3))]
    source = write_prompts(tmp_path / "in.jsonl", 200)
    out, port = tmp_path / "out", _free_port()
    proc = cli_process(tmp_path, *_replicas_overrides(servers, f"input={source}", "backend.max_concurrency=4",
                                                      "dask.partition_size=20", f"output_dir={out}",
                                                      f"metrics.port={port}"))
    scrapes = []
    while proc.poll() is None:
        sample = _scrape(port)
        if sample is not None and sample.get(("recipe_records_committed_total",), 0) > 0:
            scrapes.append(sample)
        time.sleep(0.3)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert len(scrapes) >= 2, "the endpoint answered while the run went on"
    stats = json.loads((out / "stats.json").read_text())
    last = scrapes[-1]
    for server in servers:
        url = server.base_url
        scraped = last[("recipe_requests_total", ("replica", url))]
        assert 0 < scraped <= stats["replicas"][url]["requests"] == server.stats()["requests"]
        answered = last[("recipe_request_latency_seconds_count", ("replica", url))]
        assert answered == scraped, "every scraped attempt was answered (no faults)"
        assert last[("recipe_concurrency_limit", ("replica", url))] == 4
    requests = sum(last[("recipe_requests_total", ("replica", s.base_url))] for s in servers)
    assert last[("recipe_tokens_total", ("kind", "prompt"), ("model", "stub-model"))] == 7 * requests
    assert last[("recipe_tokens_total", ("kind", "completion"), ("model", "stub-model"))] == 3 * requests
    assert stats["prompt_tokens"] == 7 * stats["requests"]
    committed = [s[("recipe_records_committed_total",)] for s in scrapes]
    assert committed == sorted(committed) and committed[-1] <= stats["records"] == 200
    assert committed[0] < 200, "scraped mid-run"


def test_metrics_without_prometheus_client_is_one_line_naming_the_extra(tmp_path, stub_server):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    blocker = tmp_path / "blocker"
    (blocker / "prometheus_client").mkdir(parents=True)
    (blocker / "prometheus_client" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(blocker), str(SRC), os.environ.get("PYTHONPATH")) if p)}
    result = cli(tmp_path, *stub_overrides(server, f"input={source}", "metrics.port=9100"), env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: metrics.port=9100") and "recipe[metrics]" in lines[0]
    assert server.stats()["requests"] == 0


# ---- 4. the run's other limits hold over a list of replicas ---------------------------------

def _start_gaps(a, b, expected: int) -> list[float]:
    """Seconds between consecutive request arrivals over both replicas, read off the stubs (after
    checking that ``expected`` requests arrived and both replicas answered some)."""
    arrivals = sorted(a.stats()["arrivals"] + b.stats()["arrivals"])
    assert len(arrivals) == expected and a.stats()["requests"] and b.stats()["requests"], "both replicas answered"
    return [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]


def test_rpm_and_the_budget_hold_for_the_whole_list_of_replicas(tmp_path, stub_server):
    """rpm is an account's quota, not a replica's: 120 rpm over two replicas is one start every
    0.5 s across both; a token budget is charged once per answer, whichever replica gave it."""
    a, b = stub_server(usage=(7, 3)), stub_server(usage=(7, 3))
    source = write_prompts(tmp_path / "in.jsonl", 8)
    cli(tmp_path, *_replicas_overrides([a, b], f"input={source}", "backend.rpm=120", "backend.max_concurrency=4",
                                       f"output_dir={tmp_path / 'paced'}"), check_exit=0)
    gaps = _start_gaps(a, b, 8)
    # one start every 0.5 s across both replicas; an arrival may come late by the machine's
    # scheduling jitter, which shortens one gap but not the pace (two replicas each at 120 rpm: ~0)
    assert min(gaps) >= 0.3 and sum(gaps) / len(gaps) >= 0.45, gaps
    a.reset()
    b.reset()
    source = write_prompts(tmp_path / "many.jsonl", 100)
    result = cli(tmp_path, *_replicas_overrides([a, b], f"input={source}", "budget.max_tokens=200",
                                                "sampling.max_tokens=5", "backend.max_concurrency=2",
                                                f"output_dir={tmp_path / 'capped'}"))
    assert result.returncode == 4 and "budget reached" in result.stderr, result.stderr
    stats = json.loads((tmp_path / "capped" / "stats.json").read_text())
    answered = a.stats()["requests"] + b.stats()["requests"]
    assert stats["budget"]["reached"] and answered < 100
    assert stats["budget"]["spent_tokens"] == 10 * answered <= 200 + 10 * 4


def test_rpm_holds_for_the_list_of_replicas_across_a_two_worker_cluster(tmp_path, stub_server, two_workers):
    """120 rpm over two replicas from two workers: one start every 0.5 s across all of them."""
    a, b = stub_server(), stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 8)
    cli(tmp_path, *_replicas_overrides([a, b], f"input={source}", "backend.rpm=120", "dask.partition_size=2",
                                       f"dask.address={two_workers}"), check_exit=0)
    gaps = _start_gaps(a, b, 8)
    # booked 0.5 s apart at the scheduler; each worker's sleep and a loaded machine only delay a start.
    # A start delayed past its slot leaves a short gap to the next, on-time one (seen: 1.07 s, then
    # 0.10 s): one short gap is allowed, right after a long one; two starts at once by design (a
    # limiter per worker or per replica, or bursts) give several short gaps and a shorter mean.
    short = [i for i, gap in enumerate(gaps) if gap < 0.3]
    assert len(short) <= 1 and all(i > 0 and gaps[i - 1] + gaps[i] >= 0.8 for i in short), gaps
    assert sum(gaps) / len(gaps) >= 0.45, gaps


def test_a_dead_replica_is_taken_out_probed_and_brought_back(stub_server):
    from recipe.testing.stub_server import StubServer

    a, b = stub_server(latency=0.02), stub_server(latency=0.02)
    port_b = b.port

    async def scenario() -> dict:
        client = AsyncLiteLLMClient(provider="openai", api_base=[a.base_url, b.base_url], api_key="k",
                                    max_concurrency=4, num_retries=0, backoff_base=0.01)

        async def ask(n: int, tag: str) -> list:
            return await asyncio.gather(*(client.query_model(messages=[{"role": "user", "content": f"{tag} {i}"}],
                                                             model="m") for i in range(n)))

        await ask(20, "both up")
        os.kill(b.pid, signal.SIGKILL)
        answers = await ask(40, "b dead")  # num_retries=0: only the fail-over saves a record
        ejected = client.limiter.replicas[1].out_until > 0
        revived = StubServer(port=port_b, latency=0.02).start()
        try:
            # the back-off is 1 s, doubled by each failed probe: ask until b is back (at most 20 s)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (revived.stats()["requests"] <= 1
                                                   or client.limiter.replicas[1].out_until):
                await asyncio.sleep(0.5)
                await ask(20, "b back")
            return {"answers": len(answers), "ejected": ejected, "revived": revived.stats()["requests"],
                    "back_in": client.limiter.replicas[1].out_until == 0}
        finally:
            revived.stop()

    result = asyncio.run(scenario())
    assert result["answers"] == 40 and result["ejected"], result
    assert result["revived"] > 1 and result["back_in"], "the probe answered and b took requests again"
