"""Prometheus metrics while a run goes on (``metrics.port``), served by prometheus-client.

Nothing is counted twice: each scrape reads what the progress watcher reads
(:func:`recipe.engine.progress.collect`: this process and every Dask worker, so on a cluster the
driver serves the cluster's totals) and turns it into metric families. The counters are the
same numbers ``stats.json`` reports for the attempt, so a scrape and the file agree.

- ``recipe_requests_total{replica}``, ``recipe_errors_total{replica,class}`` (attempts that failed)
- ``recipe_tokens_total{model,kind}`` (kind: prompt, completion)
- ``recipe_request_latency_seconds{replica}`` (histogram of answered attempts)
- ``recipe_concurrency_limit{replica}`` (the limit in force now: fixed, AIMD or ``auto``)
- ``recipe_records_committed_total``, ``recipe_records_failed_total``
- ``recipe_budget_spent_usd``, ``recipe_budget_spent_tokens`` (with ``budget.*``)
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable

from recipe.errors import ConfigError

# Histogram bounds (seconds) the latency buckets are summed into.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def require_prometheus(port: Any) -> None:
    """One line naming the extra when ``metrics.port`` is set and prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(f"metrics.port={port} needs prometheus-client: pip install 'recipe[metrics]'") from None


class RunCollector:
    """A prometheus-client collector over a snapshot function (read at most once a second)."""

    def __init__(self, snapshot: Callable[[], dict], budget: Callable[[], dict | None] = lambda: None):
        self._snapshot, self._budget = snapshot, budget
        self._lock = threading.Lock()
        self._cached: tuple[float, dict, dict | None] | None = None

    def _read(self) -> tuple[dict, dict | None]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > 1.0:
                budget = None
                with contextlib.suppress(Exception):
                    budget = self._budget()
                self._cached = (time.monotonic(), self._snapshot(), budget)
            return self._cached[1], self._cached[2]

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from recipe.clients.usage import LATENCY_BUCKET_RATIO

        now, budget = self._read()
        replicas = now.get("replicas") or {}
        requests = CounterMetricFamily("recipe_requests", "Attempts sent, per replica", labels=["replica"])
        errors = CounterMetricFamily("recipe_errors", "Attempts that failed, per replica and error class",
                                     labels=["replica", "class"])
        latency = HistogramMetricFamily("recipe_request_latency_seconds", "Latency of answered attempts",
                                        labels=["replica"])
        for url, entry in sorted(replicas.items()):
            requests.add_metric([url], entry.get("requests", 0))
            for name, count in sorted((entry.get("errors_by_class") or {}).items()):
                errors.add_metric([url, name], count)
            counts = [0] * len(LATENCY_BOUNDS)
            for bucket, count in (entry.get("latency") or {}).items():
                upper = LATENCY_BUCKET_RATIO ** (int(bucket) + 1) / 1000.0  # the log bucket's top
                for i, bound in enumerate(LATENCY_BOUNDS):
                    if upper <= bound * LATENCY_BUCKET_RATIO:
                        counts[i] += count
                        break
            total = sum((entry.get("latency") or {}).values())
            cumulative, running = [], 0
            for bound, count in zip(LATENCY_BOUNDS, counts):
                running += count
                cumulative.append((repr(bound), running))
            latency.add_metric([url], cumulative + [("+Inf", total)], sum_value=entry.get("latency_seconds", 0.0))
        tokens = CounterMetricFamily("recipe_tokens", "Tokens reported by the endpoints", labels=["model", "kind"])
        for model, (prompt, completion) in sorted((now.get("tokens_by_model") or {}).items()):
            tokens.add_metric([model, "prompt"], prompt)
            tokens.add_metric([model, "completion"], completion)
        limit = GaugeMetricFamily("recipe_concurrency_limit", "Concurrency limit in force", labels=["replica"])
        for url, value in sorted((now.get("limits") or {}).items()):
            limit.add_metric([url], value)
        yield from (requests, errors, latency, tokens, limit)
        yield CounterMetricFamily("recipe_records_committed", "Records written in committed partitions",
                                  value=now.get("records", 0))
        yield CounterMetricFamily("recipe_records_failed", "Error records in committed partitions",
                                  value=now.get("errors", 0))
        if budget is not None:
            yield GaugeMetricFamily("recipe_budget_spent_usd", "Budget spent (USD)", value=budget.get("spent_usd", 0))
            yield GaugeMetricFamily("recipe_budget_spent_tokens", "Budget spent (tokens)",
                                    value=budget.get("spent_tokens", 0))


def serve(stack: contextlib.ExitStack, port: int, host: str, client, spec) -> None:
    """Serve this attempt's metrics on ``host:port`` until ``stack`` closes."""
    require_prometheus(port)
    from prometheus_client import CollectorRegistry, start_http_server

    from recipe.engine.progress import collect

    def budget() -> dict | None:
        if spec.budget is None:
            return None
        from recipe.clients.budget import final_state

        return final_state(spec.budget, client)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(lambda: collect(client), budget))
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"metrics.port={port}: cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    stack.callback(thread.join, 5)
    stack.callback(server.shutdown)
