"""Per-process progress counters, read by the run's progress bar (summed over Dask workers).

Counts must not grow when Dask recomputes a task, so they are *set*, never added: committed
partitions by part number (the driver merges them by number, not by sum), and records answered
so far by each partition in flight (dropped when it finishes).
"""

from __future__ import annotations

import itertools
import threading

from recipe.stages.partition import count_filtered
from recipe.process_state import per_run

_lock = threading.Lock()
_committed: dict[int, tuple[int, int]] = {}  # part number -> (records, errors)
_live: dict[int, int] = {}  # partition in flight -> records answered
_filtered = 0
_deduplicated: dict[tuple[str, int], int] = {}  # (dedup stage, partition) -> records removed
_tokens = itertools.count()


def committed(index: int, records: int, errors: int) -> None:
    with _lock:
        _committed[index] = (records, errors)


def start() -> int:
    """A partition of the counting stage begins: returns its handle for :func:`answered`."""
    handle = next(_tokens)
    with _lock:
        _live[handle] = 0
    return handle


def answered(handle: int) -> None:
    with _lock:
        if handle in _live:
            _live[handle] += 1


def finish(handle: int) -> None:
    with _lock:
        _live.pop(handle, None)


def add_filtered(count: int) -> None:
    """Records a filter dropped: for the live counters, and for the partition's manifest."""
    global _filtered
    with _lock:
        _filtered += count
    count_filtered(count)


def deduplicated(stage: str, index: int, count: int) -> None:
    """Records a dedup stage removed from one partition (set, so a recomputed task counts once)."""
    with _lock:
        _deduplicated[(stage, index)] = count


def snapshot() -> dict:
    with _lock:
        return {"committed": dict(_committed), "live": sum(_live.values()), "filtered": _filtered,
                "deduplicated": dict(_deduplicated)}


@per_run
def reset() -> None:
    global _filtered
    with _lock:
        _committed.clear()
        _live.clear()
        _deduplicated.clear()
        _filtered = 0
