"""Per-process counters of records written and failed, read by the run's progress bar."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_counts = {"records": 0, "errors": 0, "filtered": 0}


def add(records: int, errors: int) -> None:
    with _lock:
        _counts["records"] += records
        _counts["errors"] += errors


def add_filtered(count: int) -> None:
    with _lock:
        _counts["filtered"] += count


def snapshot() -> dict:
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.update(records=0, errors=0, filtered=0)
