"""Counters of what a process sent and received, merged across Dask workers at the end of a run."""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from recipe.storage.run_folder import add_counts


@dataclass
class UsageStats:
    """Request-level accounting; every field adds up across processes with :meth:`merge`."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    rate_limited: int = 0
    failovers: int = 0  # requests moved to another replica after theirs failed (recipe.clients.replicas)
    schema_retries: int = 0  # answers asked again because they did not validate under their schema
    schema_failures: int = 0  # records that became SchemaError records after the last try
    tool_call_retries: int = 0  # answers asked again because their tool calls were not valid
    tool_call_failures: int = 0  # records that became ToolCallError records after the last try
    retry_wait_seconds: float = 0.0  # sleeping before retries, Retry-After included
    limit_wait_seconds: float = 0.0  # queued for a concurrency slot or an rpm/tpm start time
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # completion_tokens_details.reasoning_tokens: part of completion_tokens, billed so
    estimated_usage: int = 0  # answers whose usage the server did not report: settled at our estimate
    cache_errors: int = 0  # processes whose request cache failed and was bypassed
    cache_error: str = ""  # the first such failure, reported once
    failures: Counter = field(default_factory=Counter)
    tokens_by_model: dict = field(default_factory=dict)
    # Per schema name: answers asked, valid at the first try, valid after retries, still invalid.
    structured_by_schema: dict = field(default_factory=dict)
    # Latency and tokens per request, outcomes per minute (see request_timings): the report's charts.
    timings: dict = field(default_factory=dict)
    # Per endpoint (each replica of backend.api_base): requests, errors, and a latency histogram
    # (log buckets, see latency_bucket) that adds up across processes, unlike a list of samples.
    replicas: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add_tokens(self, model: str, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            p, c = self.tokens_by_model.get(model, (0, 0))
            self.tokens_by_model[model] = (p + prompt, c + completion)

    def count(self, name: str, amount: float = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def cache_failed(self, message: str) -> None:
        import logging

        logging.getLogger("recipe.cache").warning("%s", message)
        with self._lock:
            self.cache_errors += 1
            self.cache_error = self.cache_error or message

    def count_schema(self, name: str, **amounts: int) -> None:
        """Add to ``structured_by_schema[name]`` (keys: asked, valid_first, valid_after_retries, invalid)."""
        with self._lock:
            counts = self.structured_by_schema.setdefault(name, {})
            for key, amount in amounts.items():
                counts[key] = counts.get(key, 0) + amount

    def time_request(self, seconds: float, outcome: str, at: float) -> None:
        """One request attempt's latency and outcome (``request_timings.OUTCOMES``)."""
        from recipe.clients import request_timings

        with self._lock:
            request_timings.add_request(self.timings, seconds, outcome, at)

    def time_tokens(self, tokens: int) -> None:
        from recipe.clients import request_timings

        with self._lock:
            request_timings.add_tokens(self.timings, tokens)
    def endpoint(self, endpoint: str, latency: float | None = None, error: str | None = None) -> None:
        """One attempt on ``endpoint``: its latency (seconds) when it was answered, or the class of
        its error."""
        with self._lock:
            entry = self.replicas.setdefault(str(endpoint), {"requests": 0, "errors": 0, "errors_by_class": {},
                                                             "latency": {}, "latency_seconds": 0.0})
            entry["requests"] += 1
            if error:
                entry["errors"] += 1
                entry["errors_by_class"][error] = entry["errors_by_class"].get(error, 0) + 1
            if latency is not None:
                bucket = str(latency_bucket(latency))
                entry["latency"][bucket] = entry["latency"].get(bucket, 0) + 1
                entry["latency_seconds"] += latency

    def fail(self, error_class: str) -> None:
        with self._lock:
            self.failures[error_class] += 1

    def merge(self, other: "UsageStats | dict") -> None:
        data = other.as_dict() if isinstance(other, UsageStats) else other
        with self._lock:
            for f in _counters():
                setattr(self, f.name, getattr(self, f.name) + (data.get(f.name) or 0))
            self.cache_error = self.cache_error or data.get("cache_error", "")
            self.failures.update(data.get("failures") or {})
            for model, (p, c) in (data.get("tokens_by_model") or {}).items():
                mp, mc = self.tokens_by_model.get(model, (0, 0))
                self.tokens_by_model[model] = (mp + p, mc + c)
            for name, amounts in (data.get("structured_by_schema") or {}).items():
                counts = self.structured_by_schema.setdefault(name, {})
                for key, amount in amounts.items():
                    counts[key] = counts.get(key, 0) + amount
            if data.get("timings"):
                from recipe.clients import request_timings

                request_timings.merge(self.timings, data["timings"])
            add_counts(self.replicas, data.get("replicas") or {})

    def as_dict(self) -> dict:
        with self._lock:
            data = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "timings"}
            from recipe.clients import request_timings

            data["timings"] = request_timings.copy(self.timings)  # nested: copied whole, under the lock
        return data

    def reset(self) -> dict:
        """Return the counts so far and start from zero (used to ship deltas off a worker)."""
        snapshot = self.as_dict()
        with self._lock:
            for f in fields(self):
                setattr(self, f.name, f.default if f.default_factory is MISSING else f.default_factory())
        return snapshot


def _count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _counts(value: Any, depth: int) -> bool:
    """A count, or a mapping of ``depth`` levels down to counts (a model's [prompt, completion])."""
    if depth == 0:
        return _count(value)
    if isinstance(value, list):
        return all(_count(v) for v in value)
    return isinstance(value, dict) and all(_counts(v, depth - 1) for v in value.values())


# UsageStats' mappings of counts, by depth; tokens_by_model holds [prompt, completion] per model.
_NESTED = {"failures": 1, "tokens_by_model": 2, "structured_by_schema": 2}


def readable(usage: dict, counts: tuple[str, ...] = (), nested: dict[str, int] | None = None) -> tuple[dict, list[str]]:
    """A saved usage (an attempt's account) without the values that are not counts where counts
    belong (a hand edit, a damaged disk), and the names of those left out. Every counter of
    :class:`UsageStats` is checked, and ``counts``/``nested`` (the attempt's own: filtered, wall time...)."""
    scalars = {f.name for f in _counters()} | set(counts)
    depths = {**_NESTED, **(nested or {})}
    clean, bad = {}, []
    for key, value in usage.items():
        if key in scalars:
            ok = value is None or _count(value)
        elif key in depths:
            ok = value is None or _counts(value, depths[key]) and (key != "tokens_by_model" or all(
                isinstance(v, list) and len(v) == 2 for v in value.values()))
        else:
            ok = True
        if ok:
            clean[key] = value
        else:
            bad.append(f"usage.{key}")
    return clean, bad


def _counters() -> list:
    """The fields that add up across processes: every number."""
    return [f for f in fields(UsageStats) if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]


def _plain(value):
    """A field's value as JSON keeps it: seconds rounded, containers copied, pairs as lists."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):  # failures (a Counter), tokens_by_model, structured_by_schema, replicas
        return {k: list(v) if isinstance(v, tuple) else (_plain(v) if isinstance(v, dict) else v)
                for k, v in value.items()}
    return value


LATENCY_BUCKET_RATIO = 1.05  # bucket i holds latencies in [1.05^i, 1.05^(i+1)) ms: percentiles within 5 %


def latency_bucket(seconds: float) -> int:
    return int(math.floor(math.log(max(seconds * 1000.0, 1e-3)) / math.log(LATENCY_BUCKET_RATIO)))


def latency_percentile(histogram: dict, q: float) -> float | None:
    """The ``q``-quantile (0..1) in seconds of a :func:`latency_bucket` histogram (the bucket's middle)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for bucket in sorted(histogram, key=int):
        seen += histogram[bucket]
        if seen >= rank:
            return round(LATENCY_BUCKET_RATIO ** (int(bucket) + 0.5) / 1000.0, 4)
    return None
