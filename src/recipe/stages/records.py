"""Record identity and error records.

Every record carries ``_id`` (stable: a hash of where it came from) and ``_parent`` (the id of
the record it was derived from, or null for input records), so any output traces back to its
source. A record that fails becomes an *error record* that later stages pass through untouched
and the write stage routes to ``errors/``: every input ends in exactly one place.
"""

from __future__ import annotations

import hashlib
from typing import Any

ID, PARENT, ERROR = "_id", "_parent", "_error"


def make_id(*parts: Any) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def is_error(record: dict) -> bool:
    return ERROR in record


def error_record(stage: str, error: BaseException, record: Any, where: str | None = None) -> dict:
    """The failed input, with the stage, the error's class and message, and where it came from."""
    info = {"stage": stage, "class": type(error).__name__, "message": str(error)}
    if where:
        info["where"] = where
    rid = record.get(ID) if isinstance(record, dict) else None
    return {ERROR: info, ID: rid, "record": record}


def child(parent: dict, index: int, **fields: Any) -> dict:
    """A record derived from ``parent``: its fields, a new id, and ``_parent`` pointing back."""
    record = {k: v for k, v in parent.items() if k not in (ID, PARENT)}
    record.update(fields)
    record[ID] = make_id(parent.get(ID), index)
    record[PARENT] = parent.get(ID)
    return record
