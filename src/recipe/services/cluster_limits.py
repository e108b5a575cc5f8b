"""Choosing the limiter for a process: local, or coordinated across a Dask cluster."""

from __future__ import annotations

from recipe.services.limits import LocalLimiter


def limiter_for(spec, stats):
    """The limiter a shared client should use in this process."""
    return LocalLimiter(spec.max_concurrency, spec.rpm, spec.tpm, stats=stats)
