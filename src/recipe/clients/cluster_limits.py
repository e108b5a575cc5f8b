"""Limits that hold across every worker of a Dask cluster, coordinated by the scheduler.

A :class:`LimitsPlugin` on the scheduler holds one :class:`~recipe.clients.limits.Pacer` per
backend. Workers talk to it through a scheduler handler (Dask's own RPC, no server of ours):

- ``rpm`` / ``tpm``: each request books its start time at the scheduler (one RPC per request,
  and at most ``rpm/60`` of them per second), so the cluster-wide rate is paced exactly.
- ``max_concurrency``: the scheduler's AIMD limit is split into per-worker shares, refreshed
  every second together with the workers' success counts. Requests need no RPC for it.
- A 429 anywhere halves the cluster's limit and, with ``Retry-After``, pauses every worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from typing import Any

from recipe.clients.limits import AdjustableGate, GatedLimiter, LocalLimiter, OneDecreasePerRoundTrip, Pacer

log = logging.getLogger(__name__)
HANDLER = "recipe_limits"
REFRESH_SECONDS = 1.0


def limits_key(spec: Any) -> str:
    """One pacer per endpoint and model: stages sharing a backend share its limits."""
    raw = f"{spec.provider}|{spec.api_base}|{spec.model}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class LimitsPlugin:
    """Scheduler side. Registered by the runner (or :func:`enable_cluster_limits`)."""

    name = "recipe-limits"

    def __init__(self) -> None:
        self.pacers: dict[str, Pacer] = {}
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
               retry_after: float | None = None) -> dict:
        pacer = self.pacers.get(key)
        if pacer is None:
            pacer = self.pacers[key] = Pacer(config["max_concurrency"], config.get("rpm"), config.get("tpm"))
        now = time.monotonic()
        if action == "reserve":
            return {"delay": pacer.reserve(tokens, now)}
        for _ in range(successes):
            pacer.success()
        if action == "throttled":
            pacer.rate_limited(retry_after, now)
        workers = max(1, len(self.scheduler.workers)) if self.scheduler is not None else 1
        return {"share": max(1, pacer.concurrency // workers), "pause": max(0.0, pacer._paused_until - now)}


def enable_cluster_limits(client) -> None:
    """Install the scheduler plugin on a distributed ``Client`` (idempotent)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    plugin_cls = type("RecipeLimitsPlugin", (LimitsPlugin, SchedulerPlugin), {})
    client.register_plugin(plugin_cls(), name=LimitsPlugin.name)


class ClusterLimiter(GatedLimiter):
    """Worker side: a local concurrency share plus scheduler-booked start times."""

    def __init__(self, worker, key: str, max_concurrency: int, rpm: float | None, tpm: float | None, stats=None):
        self.worker = worker
        self.key = key
        self.config: dict[str, Any] = {"max_concurrency": int(max_concurrency), "rpm": rpm, "tpm": tpm}
        self.stats = stats
        self.gate = AdjustableGate(1)  # resized to the scheduler's share before the first request
        self._successes = 0
        self._paused_until = 0.0
        self._decreases = OneDecreasePerRoundTrip()
        self._ready_event: asyncio.Event | None = None
        self._refresher: asyncio.Task | None = None
        self._disabled = False

    async def _call(self, **msg) -> dict:
        rpc = getattr(self.worker.scheduler, HANDLER)
        future = asyncio.run_coroutine_threadsafe(rpc(key=self.key, config=self.config, **msg),
                                                  self.worker.loop.asyncio_loop)
        return await asyncio.wrap_future(future)

    def _apply(self, answer: dict) -> None:
        self.gate.resize(int(answer["share"]))
        if answer.get("pause"):
            self._paused_until = max(self._paused_until, time.monotonic() + answer["pause"])

    async def _refresh_forever(self) -> None:
        while not self._disabled:
            try:
                successes, self._successes = self._successes, 0
                self._apply(await self._call(action="refresh", successes=successes))
            except Exception as exc:  # plugin missing or scheduler gone: fall back to a local limit
                if getattr(self.worker, "status", None) is not None and self.worker.status.name == "running":
                    log.warning("cluster limits unavailable (%s); limits now hold per worker", exc)
                self.gate.resize(self.config["max_concurrency"])
                self._disabled = True
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

    def on_success(self) -> None:
        self._successes += 1

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
            successes, self._successes = self._successes, 0
            self._apply(await self._call(action="throttled", successes=successes, retry_after=retry_after))
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
    if worker is None:
        return LocalLimiter(spec.max_concurrency, spec.rpm, spec.tpm, stats=stats)
    return ClusterLimiter(worker, limits_key(spec), spec.max_concurrency, spec.rpm, spec.tpm, stats=stats)
