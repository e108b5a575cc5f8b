"""Limits that hold across every worker of a Dask cluster, coordinated by the scheduler.

A :class:`LimitsPlugin` on the scheduler holds one :class:`~recipe.clients.limits.Pacer` per
backend. Workers talk to it through a scheduler handler (Dask's own RPC, no server of ours):

- ``rpm`` / ``tpm``: each request books its start time at the scheduler (one RPC per request,
  and at most ``rpm/60`` of them per second), so the cluster-wide rate is paced exactly.
- ``max_concurrency``: the scheduler's AIMD limit is split into per-worker shares, refreshed
  every second together with the workers' success counts. Requests need no RPC for it.
- A 429 anywhere halves the cluster's limit and, with ``Retry-After``, pauses every worker.
- ``max_concurrency: auto``: workers send their latency samples (each with the worker's requests
  in flight and the cluster limit it ran under) with the refresh; the scheduler's one
  :class:`~recipe.clients.adaptive.LatencyLimit` learns from all of them (the cluster's in flight
  is the sum of the workers' last counts). A worker applies a new limit up to a refresh late, so
  only samples sent after it did, under the limit now in force, count (else slow start, seeing
  answers from the old shares, doubles again and overshoots).
- ``api_base: [URL, ...]``: each replica is its own key, so its own limit, fixed or adaptive,
  held for the whole cluster; a worker's :class:`~recipe.clients.replicas.ReplicaSet` routes
  within its shares; the set's ``rpm``/``tpm`` are one more key (the list's), booked per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from typing import Any, Callable

from recipe.clients.limits import AdjustableGate, GatedLimiter, LocalLimiter, OneDecreasePerRoundTrip, Pacer

log = logging.getLogger(__name__)
HANDLER = "recipe_limits"
REFRESH_SECONDS = 1.0


def limits_key(spec: Any, api_base: str | None = None) -> str:
    """One pacer per endpoint and model: stages sharing a backend share its limits (``api_base``:
    one replica of a list, which has its own limit)."""
    raw = f"{spec.provider}|{api_base or spec.api_base}|{spec.model}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class LimitsPlugin:
    """Scheduler side. Registered by the runner (or :func:`enable_cluster_limits`)."""

    name = "recipe-limits"

    def __init__(self) -> None:
        self.pacers: dict[str, Pacer] = {}
        self.inflight: dict[str, dict[str, int]] = {}  # key -> worker -> its requests in flight
        self.budgets: dict = {}  # run attempt -> recipe.clients.budget.BudgetLedger
        self.scheduler = None

    async def start(self, scheduler) -> None:
        from recipe.clients.budget import BUDGET_HANDLER

        self.scheduler = scheduler
        scheduler.handlers[HANDLER] = self.handle
        scheduler.handlers[BUDGET_HANDLER] = self.handle_budget

    def handle_budget(self, action: str, key: str, config: dict, **amounts) -> dict:
        """The cluster's one budget ledger per run attempt (see recipe.clients.budget)."""
        from recipe.clients.budget import plugin_ledger

        return plugin_ledger(self.budgets, key, config).handle(action, **amounts)

    def handle(self, action: str, key: str, config: dict, tokens: int = 0, successes: int = 0,
               retry_after: float | None = None, samples: list | None = None, source: str = "",
               inflight: int = 0) -> dict:
        pacer = self.pacers.get(key)
        if pacer is None:
            pacer = self.pacers[key] = Pacer(config["max_concurrency"], config.get("rpm"), config.get("tpm"),
                                             adaptive=bool(config.get("adaptive")))
        now = time.monotonic()
        if action == "reserve":
            return {"delay": pacer.reserve(tokens, now)}
        if pacer.adaptive is not None:
            counts = self.inflight.setdefault(key, {})
            counts[source] = int(inflight)
            others = sum(n for s, n in counts.items() if s != source)
            for latency, local, age, limit in samples or ():  # age: seconds since it was answered
                if int(limit) == pacer.concurrency:  # sent under the limit in force (workers apply it late)
                    pacer.success(float(latency), others + int(local), now - float(age))
        else:
            for _ in range(successes):
                pacer.success()
        if action == "throttled":
            pacer.rate_limited(retry_after, now)
        workers = max(1, len(self.scheduler.workers)) if self.scheduler is not None else 1
        return {"share": max(1, pacer.concurrency // workers), "pause": max(0.0, pacer._paused_until - now),
                "limit": pacer.concurrency}


def enable_cluster_limits(client) -> None:
    """Install the scheduler plugin on a distributed ``Client`` (idempotent)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    plugin_cls = type("RecipeLimitsPlugin", (LimitsPlugin, SchedulerPlugin), {})
    client.register_plugin(plugin_cls(), name=LimitsPlugin.name)


class ClusterLimiter(GatedLimiter):
    """Worker side: a local concurrency share plus scheduler-booked start times."""

    def __init__(self, worker, key: str, max_concurrency: int, rpm: float | None, tpm: float | None, stats=None,
                 adaptive: bool = False):
        self.worker = worker
        self.key = key
        self.config: dict[str, Any] = {"max_concurrency": int(max_concurrency), "rpm": rpm, "tpm": tpm,
                                       "adaptive": adaptive}
        self.limit = int(max_concurrency)  # the cluster's limit, as the scheduler last said
        # (latency, in flight here, when, the cluster's limit it ran under), sent with the refresh
        self._samples: list[tuple[float, int, float, int]] = []
        self._applied_at = 0.0  # when this worker last applied a new limit from the scheduler
        self._peak_inflight = 0
        self.stats = stats
        self.gate = AdjustableGate(1)  # resized to the scheduler's share before the first request
        self._successes = 0
        self._paused_until = 0.0
        self._decreases = OneDecreasePerRoundTrip()
        self._ready_event: asyncio.Event | None = None
        self._refresher: asyncio.Task | None = None
        self._disabled = False
        self.on_change: Callable[[], None] | None = None  # told when the share changes (a ReplicaSet)

    async def _call(self, **msg) -> dict:
        rpc = getattr(self.worker.scheduler, HANDLER)
        future = asyncio.run_coroutine_threadsafe(rpc(key=self.key, config=self.config, **msg),
                                                  self.worker.loop.asyncio_loop)
        return await asyncio.wrap_future(future)

    @property
    def concurrency(self) -> int:
        """The cluster-wide limit now in force (this worker holds a share of it)."""
        return self.limit

    def _report(self) -> dict:
        """What a refresh tells the scheduler: successes, latency samples, requests in flight."""
        successes, self._successes = self._successes, 0
        samples, self._samples = self._samples, []
        now = time.monotonic()
        samples = [(latency, inflight, round(now - at, 4), limit) for latency, inflight, at, limit in samples]
        peak, self._peak_inflight = max(self._peak_inflight, self.gate.in_use), self.gate.in_use
        source = str(getattr(self.worker, "address", ""))
        return {"successes": successes, "samples": samples, "inflight": peak, "source": source}

    def _apply(self, answer: dict) -> None:
        limit = int(answer.get("limit", self.limit))
        if limit != self.limit:
            self.limit, self._applied_at = limit, time.monotonic()
        self.gate.resize(int(answer["share"]))
        if answer.get("pause"):
            self._paused_until = max(self._paused_until, time.monotonic() + answer["pause"])
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _refresh_forever(self) -> None:
        while not self._disabled:
            try:
                self._apply(await self._call(action="refresh", **self._report()))
            except Exception as exc:  # plugin missing or scheduler gone: fall back to a local limit
                if getattr(self.worker, "status", None) is not None and self.worker.status.name == "running":
                    log.warning("cluster limits unavailable (%s); limits now hold per worker", exc)
                self.gate.resize(self.config["max_concurrency"])
                self._disabled = True
                self._changed()
            if self._ready_event is not None:  # made by _ready() before it starts this task
                self._ready_event.set()
            await asyncio.sleep(REFRESH_SECONDS)

    def close(self) -> None:
        """The run is over: stop the refresh task, so nothing keeps calling a long-lived scheduler."""
        self._disabled = True
        task, self._refresher = self._refresher, None
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)

    async def _ready(self) -> None:
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        await self._ready_event.wait()

    async def _start_delay(self, tokens: int) -> float:
        delay = self._paused_until - time.monotonic()
        if (self.config["rpm"] or self.config["tpm"]) and not self._disabled:
            booked = (await self._call(action="reserve", tokens=tokens))["delay"]
            delay = max(delay, booked)
        return delay

    def on_success(self, latency: float | None = None) -> None:
        self._successes += 1
        if self.config["adaptive"] and latency is not None and not self._disabled:
            now = time.monotonic()
            if now - latency >= self._applied_at:  # sent under the share of the limit it reports
                self._samples.append((latency, self.gate.in_use, now, self.limit))
            self._peak_inflight = max(self._peak_inflight, self.gate.in_use)

    def on_rate_limited(self, retry_after: float | None, started_at: float | None = None) -> None:
        if not self._decreases.allows(time.monotonic(), started_at):
            return  # answers for a limit already lowered
        self.gate.resize(self.gate.capacity // 2)  # act at once; the scheduler's answer follows
        if retry_after:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
        if not self._disabled:
            asyncio.get_running_loop().create_task(self._report_throttle(retry_after))

    async def _report_throttle(self, retry_after: float | None) -> None:
        try:
            self._apply(await self._call(action="throttled", retry_after=retry_after, **self._report()))
        except Exception:
            pass


def _current_worker():
    if "distributed" not in sys.modules:  # a Dask worker has it imported; importing it costs ~0.8 s
        return None
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def limiter_for(spec, stats):
    """The limiter a shared client uses in this process: cluster-wide inside a Dask worker."""
    worker = _current_worker() if spec.cluster_limits else None
    if isinstance(spec.api_base, tuple):  # replicas: each process routes over them, each replica its limit
        from recipe.clients.replicas import ReplicaSet

        def replica_limiter(url: str) -> ClusterLimiter:  # the cluster's limit of this one replica
            return ClusterLimiter(worker, limits_key(spec, url), spec.max_concurrency, None, None, stats=None,
                                  adaptive=spec.adaptive_concurrency)

        # an account's rpm/tpm, booked at the scheduler for the whole set (its concurrency gate unused)
        starts = ClusterLimiter(worker, limits_key(spec), spec.max_concurrency * len(spec.api_base), spec.rpm,
                                spec.tpm) if worker and (spec.rpm or spec.tpm) else None
        return ReplicaSet(spec.api_base, spec.max_concurrency, spec.rpm, spec.tpm, stats=stats,
                          adaptive=spec.adaptive_concurrency, limiter_for=replica_limiter if worker else None,
                          starts=starts)
    if worker is None:
        return LocalLimiter(spec.max_concurrency, spec.rpm, spec.tpm, stats=stats, adaptive=spec.adaptive_concurrency)
    return ClusterLimiter(worker, limits_key(spec), spec.max_concurrency, spec.rpm, spec.tpm, stats=stats,
                          adaptive=spec.adaptive_concurrency)
