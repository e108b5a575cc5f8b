"""A partition's records, with the count of records its stages dropped on the way.

Filters and dedup drop records, so no output line says they were there. Counting them in a
process-wide counter counted a partition twice when it was computed twice: once in an
interrupted attempt and again in the rerun, or when Dask recomputed a task. The counts now
travel with the partition itself, and the write stage puts them in the partition's manifest. That
way ``stats.json`` counts each dropped record once, as it counts records and failures.

A :class:`Partition` is a list, so users' own Dask code sees the records as before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator


class Partition(list):
    """Records, plus ``dropped``: ``{"filtered": n, "deduplicated": {stage: n}, "stages": {stage:
    [records in, records out, new error records]}}`` (the last is the report's funnel)."""

    def __init__(self, records: Iterable = (), dropped: dict | None = None) -> None:
        super().__init__(records)
        self.dropped: dict = dropped or {}


def dropped(partition: Iterable) -> dict:
    """What the stages before dropped from ``partition`` (empty for a plain list)."""
    found = getattr(partition, "dropped", None) or {}
    return {"filtered": int(found.get("filtered", 0)), "deduplicated": dict(found.get("deduplicated") or {}),
            "skipped": dict(found.get("skipped") or {}),
            "stages": {name: list(counts) for name, counts in (found.get("stages") or {}).items()}}


def carry(source: Iterable, records: list, filtered: int = 0, deduplicated: dict | None = None,
          skipped: dict | None = None, stage: str | None = None) -> Partition:
    """``records`` as the next partition: what ``source`` carried, plus this stage's drops (and the
    records its ``when`` skipped: not dropped unless ``when_false: drop``, but counted the same way)
    and, for ``stage``, its records in and out and the error records it made."""
    counts = dropped(source)
    counts["filtered"] += filtered
    for key, extra in (("deduplicated", deduplicated), ("skipped", skipped)):
        for name, count in (extra or {}).items():
            counts[key][name] = counts[key].get(name, 0) + count
    if stage:
        from recipe.stages.records import is_error

        failed_before = sum(1 for r in source if is_error(r))
        failed_after = sum(1 for r in records if is_error(r))
        seen = counts["stages"].setdefault(stage, [0, 0, 0])
        for index, amount in enumerate((len(source) - failed_before, len(records) - failed_after,
                                        failed_after - failed_before)):
            seen[index] += amount
    return Partition(records, counts)


class _Tally:
    filtered = 0

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}


_tally: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar("recipe_partition_tally", default=None)


@contextlib.contextmanager
def counting_filtered() -> Iterator[_Tally]:
    """Records filtered while one partition goes through a stage; its coroutines on the
    background loop count here too (a task inherits the context of the thread that scheduled it)."""
    tally = _Tally()
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def count_filtered(count: int) -> None:
    tally = _tally.get()
    if tally is not None:
        tally.filtered += count


def count_skipped(stage: str) -> None:
    """One record ``stage`` did not send because its ``when`` did not hold."""
    tally = _tally.get()
    if tally is not None:
        tally.skipped[stage] = tally.skipped.get(stage, 0) + 1
