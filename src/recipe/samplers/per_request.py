"""Per-request sampling distributions: ``sampling.temperature: {uniform: [0.5, 1.0]}`` or
``{values: [0.2, 0.7], weights: [1, 3]}``, and the same for ``top_p``.

The value is drawn per record and stage from keyed uniforms (the sampling seed, the stage and
parameter, the record's ``_id``), so a rerun sends the same value, and it is part of the request,
so of its cache key.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from recipe.samplers.keyed import record_key, stream, uniforms

DISTRIBUTED = ("temperature", "top_p")


def is_distribution(value: Any) -> bool:
    return hasattr(value, "keys") and ("uniform" in value or "values" in value)


def problems(key: str, value: Any, where: str, in_range) -> list[str]:
    """What is wrong with a distribution for sampling key ``key`` (``in_range(v)``: a valid value)."""
    from recipe.samplers.kinds import check_weights

    shown = f"{where}.{key}"
    if key not in DISTRIBUTED:
        return [f"{shown}={dict(value)!r}: only {' and '.join(DISTRIBUTED)} take a distribution"]
    extra = set(value.keys()) - {"uniform", "values", "weights"}
    if extra or ("uniform" in value) == ("values" in value):
        return [f"{shown}={dict(value)!r}: a distribution is {{uniform: [low, high]}} or {{values: [...], weights: [...]}}"]
    if "uniform" in value:
        span = list(value["uniform"]) if isinstance(value["uniform"], (list, tuple)) or hasattr(value["uniform"], "__iter__") else None
        if (span is None or len(span) != 2
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in span)):
            return [f"{shown}.uniform: must be [low, high], not {value['uniform']!r}"]
        if span[0] > span[1]:
            return [f"{shown}.uniform: low={span[0]!r} > high={span[1]!r}"]
        bad = [v for v in span if not in_range(v)]
    else:
        values = list(value["values"]) if hasattr(value["values"], "__iter__") and not isinstance(value["values"], str) else value["values"]
        weights = value.get("weights")
        weights = list(weights) if weights is not None and hasattr(weights, "__iter__") else weights
        found = check_weights(values, weights)
        if found:
            return [f"{shown}: {found[0]}"]
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            return [f"{shown}.values: must be numbers, not {values!r}"]
        bad = [v for v in values if not in_range(v)]
    return [f"{shown}: {bad[0]!r} is out of range for {key}"] if bad else []


def draw(params: dict, stage: str, record: dict | None) -> dict:
    """``params`` with each distribution replaced by this record's value for this stage."""
    wanted = [k for k in DISTRIBUTED if is_distribution(params.get(k))]
    if not wanted:
        return params
    from recipe.stages.records import record_id

    out = dict(params)
    key = np.array([record_key(record_id(record)) if record is not None else 0], dtype=np.uint64)
    seed = params.get("seed") or 0
    for name in wanted:
        spec = params[name]
        u = float(uniforms(key, stream(seed, f"{stage}.{name}", 0, 0))[0])
        if "uniform" in spec:
            low, high = spec["uniform"]
            out[name] = round(low + u * (high - low), 4)
        else:
            values, weights = list(spec["values"]), spec.get("weights")
            cumulative = np.cumsum(np.asarray(list(weights) if weights is not None else [1] * len(values), dtype=float))
            out[name] = values[min(int(np.searchsorted(cumulative / cumulative[-1], u, side="right")), len(values) - 1)]
    return out
