"""What a declared distribution may say: weights that make sense, and per-request sampling
distributions (``sampling.temperature: {uniform: [0.5, 1.0]}``) checked with the rest of the config.

The drawing itself is :mod:`recipe.stages.samplers`; the config checks the declarations before
anything starts, so these checks live here, below both.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

DISTRIBUTED = ("temperature", "top_p")


def is_distribution(value: Any) -> bool:
    return hasattr(value, "keys") and ("uniform" in value or "values" in value)


def problems(key: str, value: Any, where: str, in_range) -> list[str]:
    """What is wrong with a distribution for sampling key ``key`` (``in_range(v)``: a valid value)."""
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


def check_weights(values: Any, weights: Any) -> list[str]:
    """``values`` a non-empty list; ``weights`` (if given) as many non-negative numbers, not all 0."""
    if not isinstance(values, (list, tuple)) or not values:
        return [f"values must be a non-empty list, not {values!r:.60}"]
    if weights is None:
        return []
    if not isinstance(weights, (list, tuple)):
        return [f"weights must be a list of numbers, not {weights!r:.60}"]
    if len(weights) != len(values):
        return [f"weights has {len(weights)} entries but values has {len(values)}: give one weight per value"]
    if any(isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) for w in weights):
        return [f"weights must be numbers, not {list(weights)!r:.60}"]
    if any(w < 0 for w in weights):
        return [f"weights must not be negative: {list(weights)!r:.60}"]
    if sum(weights) <= 0:
        return ["weights sum to 0: at least one must be positive"]
    return []
