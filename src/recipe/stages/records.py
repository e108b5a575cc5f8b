"""Record identity and error records.

Every record carries ``_id`` (stable: a hash of where it came from) and ``_parent`` (the id of
the record it was derived from, or null for input records), so any output traces back to its
source. A record that fails becomes an *error record* that later stages pass through untouched
and the write stage routes to ``errors/``: every input ends in exactly one place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ID, PARENT, SOURCE, ERROR = "_id", "_parent", "_source", "_error"


def make_id(*parts: Any) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def record_id(record: dict) -> str:
    """The record's ``_id``, or a hash of its content for records built outside ``ReadStage``."""
    rid = record.get(ID)
    if rid is None:
        rid = make_id(json.dumps(record, sort_keys=True, default=str))
    return rid


def is_error(record: dict) -> bool:
    return ERROR in record


def error_record(stage: str, error: BaseException, record: Any, where: str | None = None) -> dict:
    """The failed input, with the stage, the error's class and message, and where it came from."""
    info = {"stage": stage, "class": type(error).__name__, "message": str(error)}
    where = where or (record.get(SOURCE) if isinstance(record, dict) else None)
    if where:
        info["where"] = where
    raw = getattr(error, "raw", None)  # a SchemaError keeps the model's text for inspection
    if raw is not None:
        info["raw"] = raw
    rid = record_id(record) if isinstance(record, dict) else None
    return {ERROR: info, ID: rid, "record": record}


def child(parent: dict, index: int, **fields: Any) -> dict:
    """A record derived from ``parent``: its fields, a new id, and ``_parent`` pointing back."""
    parent_id = record_id(parent)
    record = {k: v for k, v in parent.items() if k not in (ID, PARENT)}
    record.update(fields)
    record[ID] = make_id(parent_id, index)
    record[PARENT] = parent_id
    return record
