"""The requests one record's model calls made, for its ``_provenance`` (``provenance: true``).

A stage that wants them opens a log in the record's own asyncio task (:func:`collecting`); the
client notes each answered request at the cache's door (:func:`note`): the model the request was
sent with, the sampling values it carried (a per-request distribution's drawn value, not the
distribution), and whether the cache answered it. Nothing is noted when no log is open, so a run
without provenance pays one context-variable read per request.

What is noted is an allow-list of sampling keys read off the request's cache key: never the
endpoint, a header, ``extra_body`` or a key. The cache key itself is not touched: the same request
is the same cache entry whether its provenance is kept or not.
"""

from __future__ import annotations

import contextvars
from typing import Any

#: The sampling values a provenance entry reports, when the request carried them.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "reasoning_effort", "thinking")

# The log of the record being processed in this task; None: nobody asked (provenance is off).
_LOG: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar("recipe_provenance_log", default=None)


def collecting() -> list[dict]:
    """A new log for the requests made from now on in this task (and the tasks it starts)."""
    log: list[dict] = []
    _LOG.set(log)
    return log


def note(key: dict, cached: bool) -> None:
    """One answered request, from its cache key (see ``AsyncLiteLLMClient.request_key``)."""
    log = _LOG.get()
    if log is None:
        return
    params = key.get("params") or {}
    sent = {name: public(params[name]) for name in SAMPLING_KEYS if params.get(name) is not None}
    if (key.get("n") or 1) != 1:
        sent["n"] = key["n"]
    log.append({"model": key.get("model"), **sent, "cached": bool(cached)})


def entry(log: list[dict]) -> dict | None:
    """What a stage's requests for one record were, as its ``_provenance`` entry (None: it made none).

    One request: its model, sampling values and ``cached``. Several (schema retries, a dialogue's
    turns, one score per answer): the last request's model and values, ``cached`` true only when
    the cache answered every one, and ``requests``, how many there were.
    """
    if not log:
        return None
    out = dict(log[-1])
    out["cached"] = all(item["cached"] for item in log)
    out["requests"] = len(log)
    return out


def public(value: Any) -> Any:
    """``value`` as plain JSON types (a stop list given as a tuple, say)."""
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    if isinstance(value, dict):
        return {str(k): public(v) for k, v in value.items()}
    return value
