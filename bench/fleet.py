"""Adaptive concurrency (``backend.max_concurrency: auto``) against a queueing server.

The stub server runs in its own process in its queueing mode (``--capacity 16 --service-ms 200``:
at most 16 requests served at once, 200 ms each, the rest wait, as vLLM does past its batch). The
client (this process) keeps ``DRIVERS`` requests waiting on the limiter at all times, so the limit
alone decides what reaches the server. Measured in the same run:

1. every fixed limit 4, 8, ..., 256 and ``auto``: throughput (answers/s) and median latency of an
   attempt (send to answer, read off the client's per-endpoint histogram) over ``MEASURE`` seconds
   after ``WARMUP`` seconds. Goals: auto's throughput >= 0.9x the best fixed one's, its median
   latency <= 1.5x that one's;
2. auto while the capacity halves (16 -> 8, ``POST /_capacity``) mid-run: seconds until the limit
   is below the old capacity and at most the new one plus Vegas's largest tolerated queue at
   that size (6·log10(14) ≈ 7, so 14; goal: within 30 s);
3. a server that answers 429 above 16 in flight instead of queueing: the fixed limit's AIMD and auto,
   side by side (429s, limit, throughput);
4. the load-dependent mode (``--service-ms-per-request``): where auto settles against the fixed limits.

    python bench/fleet.py [--smoke]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small  # noqa: E402

from recipe.clients.litellm_client import AsyncLiteLLMClient  # noqa: E402
from recipe.clients.usage import latency_percentile  # noqa: E402
from recipe.testing.queueing import queue_args, queue_stats, set_capacity  # noqa: E402
from recipe.testing.stub_server import StubServer  # noqa: E402

CAPACITY, SERVICE_MS = 16, 200
FIXED = (4, 8, 16, 32, 64, 128, 256)
WARMUP, MEASURE = (2.0, 3.0) if small() else (6.0, 10.0)
DRIVERS = 300  # requests always waiting on the limiter: more than the largest fixed limit


def _client(base_url: str, limit: int | str) -> AsyncLiteLLMClient:
    auto = limit == "auto"
    return AsyncLiteLLMClient(provider="openai", api_base=base_url, api_key="k", timeout=120, num_retries=8,
                              max_concurrency=256 if auto else int(limit), adaptive_concurrency=auto,
                              backoff_base=0.05, backoff_max=1.0)


def _snapshot(client: AsyncLiteLLMClient) -> dict:
    entry = client.stats.as_dict()["replicas"].get(client.endpoint_name, {})
    return {"answers": sum((entry.get("latency") or {}).values()), "latency": dict(entry.get("latency") or {}),
            "rate_limited": client.stats.rate_limited, "t": time.monotonic()}


def _between(a: dict, b: dict) -> dict:
    hist = {k: v - a["latency"].get(k, 0) for k, v in b["latency"].items() if v - a["latency"].get(k, 0) > 0}
    seconds = b["t"] - a["t"]
    return {"throughput": (b["answers"] - a["answers"]) / seconds, "p50": latency_percentile(hist, 0.5),
            "rate_limited": b["rate_limited"] - a["rate_limited"]}


async def _drive(client: AsyncLiteLLMClient, seconds_of: list[float], on_tick=None) -> list[dict]:
    """Keep DRIVERS requests waiting; snapshot at each time in ``seconds_of``; trace the limit."""
    stop = False
    await client.query_model(messages=[{"role": "user", "content": "warm"}], model="m", max_tokens=8)  # imports

    async def driver(i: int) -> None:
        n = 0
        while not stop:
            n += 1
            await client.query_model(messages=[{"role": "user", "content": f"q {i} {n}"}], model="m", max_tokens=8)

    tasks = [asyncio.create_task(driver(i)) for i in range(DRIVERS)]
    start, snaps, trace = time.monotonic(), [], []
    for at in seconds_of:
        while time.monotonic() - start < at:
            await asyncio.sleep(0.25)
            trace.append((round(time.monotonic() - start, 2), client.limiter.concurrency))
            if on_tick:
                on_tick(time.monotonic() - start)
        snaps.append(_snapshot(client))
    stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return snaps + [{"trace": trace}]


def measure(base_url: str, limit: int | str) -> dict:
    snaps = asyncio.run(_drive(_client(base_url, limit), [WARMUP, WARMUP + MEASURE]))
    trace = snaps[-1]["trace"]
    result = _between(snaps[0], snaps[1])
    result["limit_median"] = statistics.median(c for t, c in trace if t >= WARMUP)
    return result


def idle(server: StubServer) -> None:
    """Wait until the server has served what the last client left queued (its requests outlive it)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        q = queue_stats(server.port)
        if q["in_service"] == 0 and q["waiting"] == 0:
            return
        time.sleep(0.2)


def sweep(server: StubServer, label: str, goals: bool = True) -> list[dict]:
    rows = []
    print(f"\n## {label}\n| limit | answers/s | median latency | settled limit |\n|---|---|---|---|")
    for limit in (*FIXED, "auto"):
        idle(server)
        server.reset()
        r = {"limit": limit, **measure(server.base_url, limit)}
        rows.append(r)
        print(f"| {limit} | {r['throughput']:.1f} | {r['p50'] * 1000:.0f} ms | {r['limit_median']} |", flush=True)
    best = max((r for r in rows if r["limit"] != "auto"), key=lambda r: r["throughput"])
    auto = rows[-1]
    goal = " (goal >= 0.9)" if goals else ""
    report(f"auto throughput / best fixed ({best['limit']}){goal}", auto["throughput"], best["throughput"], "ans/s")
    goal = " (goal <= 1.5)" if goals else ""
    report(f"auto median latency / best fixed's{goal}", auto["p50"] * 1000, best["p50"] * 1000, "ms")
    return rows


def replicas() -> dict:
    """Three replicas of capacity 4, 8 and 16 (100 ms each) behind one auto client: against the sum
    of their capacities, 28 / 0.1 s = 280 answers/s."""
    capacities, service_ms = (4, 8, 16), 100
    servers = [StubServer(extra_args=tuple(queue_args(c, service_ms))).start() for c in capacities]
    try:
        urls = tuple(s.base_url for s in servers)
        client = AsyncLiteLLMClient(provider="openai", api_base=urls, api_key="k", timeout=120, num_retries=8,
                                    max_concurrency=256, adaptive_concurrency=True, backoff_base=0.05, backoff_max=1.0)

        def answered() -> int:
            return sum(sum((e.get("latency") or {}).values()) for e in client.stats.as_dict()["replicas"].values())

        async def run() -> tuple[float, list]:
            stop = False
            await client.query_model(messages=[{"role": "user", "content": "warm"}], model="m", max_tokens=8)

            async def driver(i: int) -> None:
                n = 0
                while not stop:
                    n += 1
                    await client.query_model(messages=[{"role": "user", "content": f"r {i} {n}"}], model="m")

            tasks = [asyncio.create_task(driver(i)) for i in range(DRIVERS)]
            await asyncio.sleep(WARMUP)
            a, t0 = answered(), time.monotonic()
            await asyncio.sleep(MEASURE)
            rate = (answered() - a) / (time.monotonic() - t0)
            limits = [r.limiter.concurrency for r in client.limiter.replicas]
            stop = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return rate, limits

        rate, limits = asyncio.run(run())
        served = [s.stats()["requests"] for s in servers]
    finally:
        for s in servers:
            s.stop()
    ideal = sum(capacities) / (service_ms / 1000)
    print(f"\n## three replicas, capacity {capacities}, {service_ms} ms each, auto")
    print(f"limits settled at {limits}; requests served {served}")
    report("answers/s / sum of capacities (goal >= 0.9)", rate, ideal, "ans/s")
    return {"throughput": rate, "ideal": ideal, "limits": limits, "served": served}


def halving(server: StubServer) -> dict:
    change_at, total = (4.0, 16.0) if small() else (15.0, 50.0)
    changed = {}

    def tick(t: float) -> None:
        if t >= change_at and not changed:
            set_capacity(server.port, CAPACITY // 2)
            changed["at"] = t

    snaps = asyncio.run(_drive(_client(server.base_url, "auto"), [total], on_tick=tick))
    trace = snaps[-1]["trace"]
    before = statistics.median(c for t, c in trace if change_at - 5 <= t < change_at)
    target = 14
    followed = next((t - changed["at"] for t, c in trace if t > changed["at"] and c <= target), None)
    after = statistics.median(c for t, c in trace if t >= total - 5)
    print(f"\n## capacity {CAPACITY} -> {CAPACITY // 2} at {changed['at']:.1f} s: limit {before} before, "
          f"<= {target} after {followed if followed is None else round(followed, 1)} s "
          f"(goal <= 30 s), {after} over the last 5 s")
    return {"before": before, "followed_seconds": followed, "after": after}


def throttling() -> list[dict]:
    rows = []
    print("\n## 429 above 16 in flight, 200 ms each (no queue)\n| limit | answers/s | 429s/s | settled limit |\n|---|---|---|---|")
    with StubServer(latency=SERVICE_MS / 1000, throttle_above=CAPACITY, retry_after=0) as server:
        for limit in (256, "auto"):
            time.sleep(1.0)  # the last client's requests still in the server: reset() would miscount them
            server.reset()
            r = {"limit": limit, **measure(server.base_url, limit)}
            rows.append(r)
            print(f"| {limit} (AIMD) | {r['throughput']:.1f} | {r['rate_limited'] / MEASURE:.1f} | {r['limit_median']} |"
                  if limit != "auto" else
                  f"| auto | {r['throughput']:.1f} | {r['rate_limited'] / MEASURE:.1f} | {r['limit_median']} |",
                  flush=True)
    return rows


def main() -> None:
    banner("fleet")
    results: dict = {}
    with StubServer(extra_args=tuple(queue_args(CAPACITY, SERVICE_MS))) as server:
        results["queueing"] = sweep(server, f"queueing: capacity {CAPACITY}, {SERVICE_MS} ms each")
        idle(server)
        set_capacity(server.port, CAPACITY)
        results["halving"] = halving(server)
    results["throttling"] = throttling()
    if not small():
        with StubServer(extra_args=tuple(queue_args(64, SERVICE_MS, 10))) as server:
            results["load"] = sweep(server, f"load-dependent: capacity 64, {SERVICE_MS} ms + 10 ms per other in service",
                                    goals=False)
    results["replicas"] = replicas()
    save("fleet", [results])


if __name__ == "__main__":
    main()
