"""What ``backend.max_concurrency`` says: a fixed limit ``N``, or ``auto`` (adaptive, up to a ceiling).

``N`` (an integer >= 1) is a fixed ceiling that AIMD lowers only on 429s. ``auto`` adapts the limit
from latency as well (``recipe.clients.adaptive``), up to :data:`AUTO_CEILING`; ``auto:N`` sets
the ceiling to ``N``. Parsed here once, for the schema's check and for the client's spec.
"""

from __future__ import annotations

from typing import Any

AUTO_CEILING = 256  # the ceiling of `auto` when none is given: the largest fixed limit the bench compares


def parse_max_concurrency(value: Any) -> tuple[int, bool]:
    """``(ceiling, adaptive)`` for a ``backend.max_concurrency`` value; ValueError naming what is
    accepted for anything else."""
    if isinstance(value, bool):
        raise ValueError("must be an integer >= 1, auto, or auto:N")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be >= 1 (or auto)")
        return value, False
    text = str(value).strip().lower()
    if text == "auto":
        return AUTO_CEILING, True
    head, sep, tail = text.partition(":")
    if head == "auto" and sep and tail.isdigit() and int(tail) >= 1:
        return int(tail), True
    if text.isdigit() and int(text) >= 1:
        return int(text), False
    raise ValueError("must be an integer >= 1, auto, or auto:N (adaptive up to N)")
