"""Concurrency and rate limits: AIMD concurrency plus GCRA pacing of requests and tokens.

:class:`Pacer` is the algorithm, clock-injected and free of I/O, so the same code runs in
a single process (:class:`LocalLimiter`) and inside the Dask scheduler for a cluster-wide
limit (``recipe.clients.cluster_limits``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Protocol

from recipe.clients.adaptive import LatencyLimit
from recipe.config import defaults


class Limiter(Protocol):
    """What the async client asks before and tells after every attempt."""

    def slot(self, tokens: int) -> "AsyncIterator[None]": ...

    def on_success(self, latency: float | None = None) -> None: ...

    def on_rate_limited(self, retry_after: float | None, started_at: float | None = None) -> None: ...


class OneDecreasePerRoundTrip:
    """Like TCP, one decrease per round trip: a 429 lowers a limit only if its request started
    after the last decrease (the requests already in flight answer for the old limit); without a
    start time, at most once per ``interval`` seconds. Used by :class:`Pacer` (a process's or the
    scheduler's limit) and by the cluster limiter's local share."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._last = -1e18

    def allows(self, now: float, started_at: float | None = None) -> bool:
        """Whether a 429 seen at ``now`` (its request sent at ``started_at``) may lower the limit;
        if so, it counts as the decrease."""
        fresh = started_at >= self._last if started_at is not None else now - self._last >= self.interval
        if fresh:
            self._last = now
        return fresh


class Pacer:
    """Decides when the next request may start.

    - Concurrency follows AIMD: +1 per ``limit`` successes, halved on a 429, never above
      ``max_concurrency`` nor below 1, at most once per round trip (:class:`OneDecreasePerRoundTrip`).
    - ``rpm`` and ``tpm`` are paced with GCRA (a virtual schedule): each request reserves the
      next free start time, so the rate is smooth rather than bursty at minute boundaries.
    - A 429's ``Retry-After`` pauses every new start until it has passed.
    - ``adaptive`` (``backend.max_concurrency: auto``): latency drives the limit instead of the
      count of successes (:class:`recipe.clients.adaptive.LatencyLimit`, the Vegas rule), with
      ``max_concurrency`` as its ceiling; a 429 still halves it.
    """

    def __init__(self, max_concurrency: int, rpm: float | None = None, tpm: float | None = None,
                 decrease_interval: float = 1.0, adaptive: bool = False):
        self.max_concurrency = max(1, int(max_concurrency))
        self.adaptive = LatencyLimit(self.max_concurrency) if adaptive else None
        self.limit = self.adaptive.limit if self.adaptive else float(self.max_concurrency)
        self.rpm = rpm or None
        self.tpm = tpm or None
        self._decreases = OneDecreasePerRoundTrip(decrease_interval)
        self._next_request_at = 0.0
        self._next_token_at = 0.0
        self._paused_until = 0.0

    @property
    def concurrency(self) -> int:
        return max(1, int(self.limit))

    def reserve(self, tokens: int, now: float) -> float:
        """Book a start time for a request of ``tokens``; return how long to wait for it."""
        start = max(now, self._paused_until)
        if self.rpm:
            start = max(start, self._next_request_at)
            self._next_request_at = start + 60.0 / self.rpm
        if self.tpm:
            start = max(start, self._next_token_at)
            self._next_token_at = start + 60.0 * max(1, tokens) / self.tpm
        return start - now

    def success(self, latency: float | None = None, inflight: int = 0, now: float | None = None) -> None:
        """A request succeeded; with ``adaptive``, its ``latency`` (seconds, with ``inflight``
        requests outstanding) is the signal, else the success itself is (AIMD's increase)."""
        if self.adaptive is None:
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / self.limit)
        elif latency is not None:
            self.adaptive.sample(latency, inflight, time.monotonic() if now is None else now)
            self.limit = self.adaptive.limit

    def rate_limited(self, retry_after: float | None, now: float, started_at: float | None = None) -> None:
        if self._decreases.allows(now, started_at):
            if self.adaptive is not None:
                self.adaptive.dropped(now)
                self.limit = self.adaptive.limit
            else:
                self.limit = max(1.0, self.limit / 2.0)
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)


class AdjustableGate:
    """A FIFO semaphore whose capacity can change while requests wait.

    ``asyncio.Semaphore`` has a fixed size and ``Condition.notify_all`` wakes every waiter on
    each release (quadratic with thousands of queued requests); AIMD needs neither.
    """

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.in_use = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled at once: give the slot back
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.capacity:
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1
                future.set_result(None)


class GatedLimiter:
    """A concurrency gate plus a start delay; subclasses say where the delay comes from."""

    gate: AdjustableGate
    stats = None

    async def _ready(self) -> None:
        """Anything to set up on the running loop before the first request."""

    async def _start_delay(self, tokens: int) -> float:
        return 0.0

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        await self._ready()
        began = time.monotonic()
        await self.gate.acquire()
        try:
            delay = await self._start_delay(tokens)
            if delay > 0:
                await asyncio.sleep(delay)
            waited = time.monotonic() - began
            if self.stats is not None and waited > 0.001:
                self.stats.count("limit_wait_seconds", waited)
            yield
        finally:
            self.gate.release()


class LocalLimiter(GatedLimiter):
    """A :class:`Pacer` for one process, enforced on its event loop."""

    def __init__(self, max_concurrency: int = defaults.MAX_CONCURRENCY, rpm: float | None = None, tpm: float | None = None,
                 stats=None, adaptive: bool = False):
        self.pacer = Pacer(max_concurrency, rpm, tpm, adaptive=adaptive)
        self.stats = stats
        self.gate = AdjustableGate(self.pacer.concurrency)

    @property
    def concurrency(self) -> int:
        """The limit now in force (what a metrics endpoint or a bench reports)."""
        return self.gate.capacity

    async def _start_delay(self, tokens: int) -> float:
        return self.pacer.reserve(tokens, time.monotonic())

    def on_success(self, latency: float | None = None) -> None:
        self.pacer.success(latency, self.gate.in_use)
        if self.pacer.concurrency != self.gate.capacity:
            self.gate.resize(self.pacer.concurrency)

    def on_rate_limited(self, retry_after: float | None, started_at: float | None = None) -> None:
        self.pacer.rate_limited(retry_after, time.monotonic(), started_at)
        self.gate.resize(self.pacer.concurrency)
