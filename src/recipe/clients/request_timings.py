"""Per-request timings of a process: latency and tokens per request as log-bucketed histograms,
and outcomes per minute, kept in :class:`recipe.clients.usage.UsageStats` (field ``timings``).

Histograms, not lists of samples: they add up across Dask workers and attempts, stay small for a
run of millions of requests, and still give p50/p90/p99 within a few percent (buckets grow by
5% for latency, 10% for tokens). The report (:mod:`recipe.report`) draws them from the attempts'
accounts. Keys are strings, so a histogram reads back from JSON as it was written.
"""

from __future__ import annotations

import math

LATENCY_RATIO = 1.05
TOKENS_RATIO = 1.10
OUTCOMES = ("ok", "rate_limited", "retried", "failed")  # a minute's counts, in this order


def _bucket(value: float, ratio: float) -> str:
    return str(int(math.floor(math.log(max(value, 0.1)) / math.log(ratio))))


def bucket_value(bucket: str | int, ratio: float) -> float:
    """The middle of a bucket (geometric)."""
    return ratio ** (int(bucket) + 0.5)


def empty() -> dict:
    return {"latency_ms": {}, "tokens": {}, "minutes": {}}


def add_request(timings: dict, seconds: float, outcome: str, at: float) -> None:
    """One request attempt: its latency and its outcome (one of :data:`OUTCOMES`) in minute ``at``."""
    latency = timings.setdefault("latency_ms", {})
    key = _bucket(seconds * 1000.0, LATENCY_RATIO)
    latency[key] = latency.get(key, 0) + 1
    minutes = timings.setdefault("minutes", {})
    minute = str(int(at // 60) * 60)
    counts = minutes.get(minute)
    if counts is None:
        counts = minutes[minute] = [0] * len(OUTCOMES)
    counts[OUTCOMES.index(outcome)] += 1


def add_tokens(timings: dict, tokens: int) -> None:
    """One answered request's tokens (prompt + completion)."""
    hist = timings.setdefault("tokens", {})
    key = _bucket(max(tokens, 1), TOKENS_RATIO)
    hist[key] = hist.get(key, 0) + 1


def merge(into: dict, other: dict | None) -> dict:
    """``other``'s counts added to ``into`` (returned)."""
    for name in ("latency_ms", "tokens"):
        hist = into.setdefault(name, {})
        for key, count in ((other or {}).get(name) or {}).items():
            hist[str(key)] = hist.get(str(key), 0) + int(count)
    minutes = into.setdefault("minutes", {})
    for minute, counts in ((other or {}).get("minutes") or {}).items():
        mine = minutes.setdefault(str(minute), [0] * len(OUTCOMES))
        for index, count in enumerate(list(counts)[:len(OUTCOMES)]):
            mine[index] += int(count)
    return into


def copy(timings: dict) -> dict:
    """A deep copy (what is saved must not change under the writer's feet)."""
    return merge(empty(), timings)


def percentile(hist: dict, q: float, ratio: float = LATENCY_RATIO) -> float | None:
    """The ``q``-th percentile (0..100) of a bucketed histogram, as a bucket's middle; None if empty."""
    items = sorted((int(k), int(v)) for k, v in (hist or {}).items())
    total = sum(v for _, v in items)
    if not total:
        return None
    rank, seen = q / 100.0 * total, 0
    for bucket, count in items:
        seen += count
        if seen >= rank:
            return bucket_value(bucket, ratio)
    return bucket_value(items[-1][0], ratio)
