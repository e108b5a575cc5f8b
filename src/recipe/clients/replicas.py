"""Several replicas of one model (``backend.api_base: [URL, ...]``): routing, health and per-replica limits.

Users running their own vLLM / SGLang / NIM replicas should not need a load balancer of their own.
A :class:`ReplicaSet` is the client's limiter when ``api_base`` is a list:

- each replica has its own concurrency limit (fixed, or adapted from its own latency with
  ``max_concurrency: auto``): a slower or smaller replica settles lower;
- each request goes to the replica with the fewest requests outstanding relative to its limit
  (least-outstanding, weighted), so a slower replica gets less;
- a replica that refuses connections or answers 5xx :data:`FAILURES_TO_EJECT` times in a row is
  taken out for a back-off (doubling from :data:`BACKOFF_SECONDS` up to :data:`BACKOFF_MAX`); when
  it is due, one request probes it; a success brings it back, a failure doubles the back-off;
- the client retries a request that failed on a replica on another one, without spending one of
  its ``num_retries`` (:meth:`ReplicaSet.fails_over`): a dead replica loses no record;
- ``rpm``/``tpm`` hold for the whole set (one :class:`~recipe.clients.limits.Pacer` books start
  times), since a provider's quota is per account, not per replica;
- on a Dask cluster each replica's limit is the scheduler's, one for the whole cluster
  (:func:`recipe.clients.cluster_limits.limiter_for` gives each replica a
  :class:`~recipe.clients.cluster_limits.ClusterLimiter`): this worker holds a share of it, the
  set routes within its shares, and a share that grows wakes the requests waiting here; the
  set's ``rpm``/``tpm`` are booked at the scheduler too (``starts``), one rate for the cluster.

Which replica answered never enters the cache key or the run's identity (the client's
``endpoint_id`` names the set, not a member): adding or removing a replica continues the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

from recipe import errors
from recipe.clients.limits import GatedLimiter, LocalLimiter, Pacer

FAILURES_TO_EJECT = 3  # consecutive connection errors or 5xx before a replica is taken out
BACKOFF_SECONDS = 1.0
BACKOFF_MAX = 30.0
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("recipe_replica", default=None)


class Replica:
    """One endpoint: its own limiter (this process's, or its share of the cluster's), its health."""

    def __init__(self, url: str, limiter: GatedLimiter):
        self.url = url
        self.limiter: GatedLimiter = limiter
        self.failures = 0  # in a row
        self.out_until = 0.0  # > 0: taken out; probed once this time has passed
        self.backoff = BACKOFF_SECONDS
        self.probing = False
        self.probed = False  # the last attempt here was the probe (read once the slot is released)

    @property
    def load(self) -> float:
        gate = self.limiter.gate
        return gate.in_use / gate.capacity

    def can_take(self, now: float) -> bool:
        gate = self.limiter.gate
        if gate.in_use >= gate.capacity:
            return False
        if self.out_until:
            return not self.probing and now >= self.out_until
        return True


class ReplicaSet:
    """The client's limiter over several replicas (the :class:`~recipe.clients.limits.Limiter` protocol;
    :meth:`slot` yields the :class:`Replica` the attempt goes to)."""

    def __init__(self, urls: Sequence[str], max_concurrency: int, rpm: float | None = None, tpm: float | None = None,
                 stats=None, adaptive: bool = False,
                 limiter_for: Callable[[str], GatedLimiter] | None = None, starts: GatedLimiter | None = None):
        """``limiter_for(url)``: each replica's limiter (default: this process's own, fixed or adaptive);
        ``starts``: where the set's rpm/tpm book start times (default: this process's :class:`Pacer`)."""
        make = limiter_for or (lambda url: LocalLimiter(max_concurrency, stats=None, adaptive=adaptive))
        self.replicas = [Replica(url, make(url)) for url in urls]
        for replica in self.replicas:  # a cluster share that changes may free a slot for a waiter
            if hasattr(replica.limiter, "on_change"):
                replica.limiter.on_change = self._signal
        self._readied = False
        self.pacer = Pacer(max_concurrency * len(self.replicas), rpm, tpm)  # rpm/tpm for the whole set
        self.starts = starts
        self.stats = stats
        # Requests waiting for a slot on any replica, first come first served: a freed slot wakes
        # one of them (waking every waiter on each release costs O(waiters) per answer).
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def concurrency(self) -> int:
        """The set's limit now: the sum of the limits of the replicas in service."""
        return sum(r.limiter.gate.capacity for r in self.replicas if not r.out_until)

    def _pick(self, now: float) -> "Replica | None":
        """The replica the next request goes to (a replica due for its probe first), or None."""
        ready = [r for r in self.replicas if r.can_take(now)]
        if not ready:
            return None
        return min(ready, key=lambda r: (not r.out_until, r.load))

    @staticmethod
    def _take(replica: Replica) -> Replica:
        replica.limiter.gate.in_use += 1
        if replica.out_until:
            replica.probing = True
        return replica

    def _wake(self) -> None:
        """Hand free slots to waiting requests, in order; arm a timer for the next probe."""
        now = time.monotonic()
        while self._waiters:
            if self._waiters[0].done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            replica = self._pick(now)
            if replica is None:
                break
            self._waiters.popleft().set_result(self._take(replica))
        if self._waiters and self._timer is None:
            due = [r.out_until - now for r in self.replicas if r.out_until and not r.probing]
            if due:
                self._timer = asyncio.get_running_loop().call_later(max(0.01, min(due)), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _signal(self) -> None:
        if self._waiters:
            try:
                self._wake()
            except RuntimeError:  # no running loop (a report from outside the client's loop)
                pass

    async def _acquire(self) -> Replica:
        if not self._waiters:
            replica = self._pick(time.monotonic())
            if replica is not None:
                return self._take(replica)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake()  # a probe may be due, or a timer is needed
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted and cancelled at once: give it back
                replica = future.result()
                replica.probing = False
                replica.limiter.gate.release()
                self._signal()
            raise

    async def _ready(self) -> None:
        """Each replica's limiter set up on this loop (a cluster share: its first one from the scheduler)."""
        if not self._readied:
            for replica in self.replicas:
                await replica.limiter._ready()
            if self.starts is not None:
                await self.starts._ready()
            self._readied = True

    def close(self) -> None:
        """The run is over: stop what the replicas' limiters run in the background."""
        for limiter in [r.limiter for r in self.replicas] + [self.starts]:
            close = getattr(limiter, "close", None)
            if close is not None:
                close()

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Replica]:
        began = time.monotonic()
        await self._ready()
        replica = await self._acquire()
        _CURRENT.set(replica)
        try:
            # the set's rpm/tpm, and the replica's own pause (a Retry-After, the cluster's too)
            booked = self.pacer.reserve(tokens, time.monotonic()) if self.starts is None \
                else await self.starts._start_delay(tokens)
            delay = max(booked, await replica.limiter._start_delay(tokens))
            if delay > 0:
                await asyncio.sleep(delay)
            waited = time.monotonic() - began
            if self.stats is not None and waited > 0.001:
                self.stats.count("limit_wait_seconds", waited)
            yield replica
        finally:
            # _CURRENT stays set: the client reports the attempt's failure after leaving the slot
            replica.probed, replica.probing = replica.probing, False
            replica.limiter.gate.release()
            self._signal()

    @staticmethod
    def current() -> "Replica | None":
        """The replica of the attempt running in this task (set inside :meth:`slot`)."""
        return _CURRENT.get()

    def on_success(self, latency: float | None = None) -> None:
        replica = _CURRENT.get()
        if replica is None:
            return
        replica.failures = 0
        if replica.out_until:  # the probe answered: back in service
            replica.out_until, replica.backoff = 0.0, BACKOFF_SECONDS
        replica.limiter.on_success(latency)
        self._signal()

    def on_rate_limited(self, retry_after: float | None, started_at: float | None = None) -> None:
        replica = _CURRENT.get()
        if replica is not None:
            replica.limiter.on_rate_limited(retry_after, started_at)
        if retry_after:
            self.pacer.rate_limited(retry_after, time.monotonic(), started_at)

    def on_failure(self, error: BaseException) -> None:
        """An attempt failed: a connection error or a 5xx counts against the replica's health."""
        replica = _CURRENT.get()
        if replica is None or not isinstance(error, (errors.EndpointConnectionError, errors.ServerError)):
            return
        replica.failures += 1
        if replica.probed or replica.failures >= FAILURES_TO_EJECT:
            if replica.out_until:
                replica.backoff = min(BACKOFF_MAX, replica.backoff * 2)
            replica.out_until = time.monotonic() + replica.backoff
            replica.failures = 0
        self._signal()

    def fails_over(self, error: BaseException) -> bool:
        """Whether a request that failed with ``error`` goes to another replica at once, without
        spending a retry: the replica's fault (unreachable, 5xx) while another is in service."""
        replica = _CURRENT.get()
        if replica is None or not isinstance(error, (errors.EndpointConnectionError, errors.ServerError)):
            return False
        return any(r is not replica and not r.out_until for r in self.replicas)
