"""Per-process counters of records written and failed, read by the run's progress bar."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_counts: dict = {"records": 0, "errors": 0, "filtered": 0, "deduplicated": {}}


def add(records: int, errors: int) -> None:
    with _lock:
        _counts["records"] += records
        _counts["errors"] += errors


def add_filtered(count: int) -> None:
    with _lock:
        _counts["filtered"] += count


def add_deduplicated(stage: str, count: int) -> None:
    """Records a dedup stage removed, by stage name (stats.json ``deduplicated``)."""
    with _lock:
        by_stage = _counts["deduplicated"]
        by_stage[stage] = by_stage.get(stage, 0) + count


def snapshot() -> dict:
    with _lock:
        return {**_counts, "deduplicated": dict(_counts["deduplicated"])}


def reset() -> None:
    with _lock:
        _counts.update(records=0, errors=0, filtered=0, deduplicated={})
