"""The pacing and AIMD algorithm, clock-injected, and the adjustable gate."""

from __future__ import annotations

import asyncio
import time

import pytest

from recipe.clients.cluster_limits import ClusterLimiter
from recipe.clients.limits import AdjustableGate, LocalLimiter, Pacer


def test_rpm_books_evenly_spaced_start_times():
    pacer = Pacer(max_concurrency=100, rpm=120)  # one start every 0.5 s
    delays = [pacer.reserve(tokens=10, now=0.0) for _ in range(5)]
    assert delays == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert pacer.reserve(tokens=10, now=10.0) == 0.0, "an idle period does not bank a burst"


def test_tpm_paces_by_tokens():
    pacer = Pacer(max_concurrency=100, tpm=6000)  # 100 tokens per second
    assert pacer.reserve(tokens=200, now=0.0) == 0.0
    assert pacer.reserve(tokens=50, now=0.0) == 2.0  # waits for the 200 tokens booked before it
    assert pacer.reserve(tokens=50, now=0.0) == 2.5


def test_aimd_halves_on_429_and_recovers_additively():
    pacer = Pacer(max_concurrency=32, decrease_interval=1.0)
    pacer.rate_limited(None, now=0.0)
    assert pacer.concurrency == 16
    pacer.rate_limited(None, now=0.5)
    assert pacer.concurrency == 16, "one decrease per interval: a burst of 429s is one signal"
    pacer.rate_limited(None, now=1.5)
    assert pacer.concurrency == 8
    for _ in range(9):  # about one window of successes adds one slot
        pacer.success()
    assert pacer.concurrency == 9
    for _ in range(10_000):
        pacer.success()
    assert pacer.concurrency == 32, "never above max_concurrency"


def test_retry_after_pauses_every_start():
    pacer = Pacer(max_concurrency=4)
    pacer.rate_limited(retry_after=3.0, now=10.0)
    assert pacer.reserve(tokens=1, now=11.0) == 2.0
    assert pacer.reserve(tokens=1, now=14.0) == 0.0


def test_gate_is_fifo_and_resizes_while_requests_wait():
    async def scenario():
        gate = AdjustableGate(1)
        order = []

        async def worker(i):
            await gate.acquire()
            order.append(i)
            await asyncio.sleep(0.01)
            gate.release()

        await gate.acquire()
        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert order == [] and gate.in_use == 1
        gate.resize(3)  # two waiters start at once
        await asyncio.sleep(0)
        assert order == [0, 1]
        gate.release()
        await asyncio.gather(*tasks)
        return order, gate.in_use

    order, in_use = asyncio.run(scenario())
    assert order == [0, 1, 2, 3, 4] and in_use == 0


def test_one_decrease_per_round_trip():
    pacer = Pacer(max_concurrency=32)
    pacer.rate_limited(None, now=1.0, started_at=0.9)
    assert pacer.concurrency == 16
    pacer.rate_limited(None, now=1.05, started_at=0.95)  # was in flight before the decrease
    assert pacer.concurrency == 16
    pacer.rate_limited(None, now=1.2, started_at=1.1)  # started under the new limit
    assert pacer.concurrency == 8


def _local_limiter(capacity: int) -> LocalLimiter:
    return LocalLimiter(capacity)


def _cluster_share(capacity: int) -> ClusterLimiter:
    """A cluster limiter whose scheduler share is ``capacity``, reporting to no scheduler (as after
    a missing plugin): its own decreases are what is left to see."""
    limiter = ClusterLimiter(None, "key", capacity, None, None)
    limiter.gate.resize(capacity)
    limiter._disabled = True
    return limiter


@pytest.mark.parametrize("make", [_local_limiter, _cluster_share], ids=["local", "cluster"])
def test_local_and_cluster_limiters_share_one_decrease_per_round_trip(make):
    limiter = make(16)
    before = time.monotonic()
    limiter.on_rate_limited(None, started_at=before - 1.0)
    assert limiter.gate.capacity == 8
    limiter.on_rate_limited(None, started_at=before - 0.5)  # in flight before that decrease
    assert limiter.gate.capacity == 8
    limiter.on_rate_limited(None, started_at=time.monotonic())  # sent under the lowered limit
    assert limiter.gate.capacity == 4
