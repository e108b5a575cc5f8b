"""Per-request sampling distributions: ``sampling.temperature: {uniform: [0.5, 1.0]}`` or
``{values: [0.2, 0.7], weights: [1, 3]}``, and the same for ``top_p``.

The value is drawn per record and stage from keyed uniforms (the sampling seed, the stage and
parameter, the record's ``_id``), so a rerun sends the same value, and it is part of the request,
so of its cache key.
"""

from __future__ import annotations


import numpy as np

from recipe.config.distributions import DISTRIBUTED, is_distribution, problems  # noqa: F401 - checked in the config
from recipe.stages.samplers.keyed import record_key, stream, uniforms

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
