"""Record identity and error records.

Every record carries ``_id`` (stable: a hash of where it came from) and ``_parent`` (the id of
the record it was derived from, or null for input records), so any output traces back to its
source. A record that fails becomes an *error record* that later stages pass through untouched
and the write stage routes to ``errors/``: every input ends in exactly one place.

The fields in :data:`RESERVED` are recipe's own. An input record may carry them only as recipe
wrote them: a line of an ``errors/`` file (it is retried) or a record of a previous run's output
(it keeps its identity). Anything else carrying them is refused with an error record of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import hashlib
import json
import re
from typing import Any, TypeGuard

from recipe.redaction import redact

ID, PARENT, SOURCE, ERROR = "_id", "_parent", "_source", "_error"
#: Per model stage, what answered the record (``provenance: true``; see :func:`with_provenance`).
PROVENANCE = "_provenance"
MODEL = "_model"  # the model that answered, with backend.fallbacks (recipe.clients.fallbacks)
#: Fields recipe writes into records; the README documents them.
RESERVED = (ID, PARENT, SOURCE, ERROR, MODEL, PROVENANCE)
_HEX_ID = re.compile(r"[0-9a-f]{16}")


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
    """The failed input, with the stage, the error's class and message, and where it came from.

    The message (and a SchemaError's raw text) is redacted of every secret this process knows:
    an error record is written to ``errors/``, and an exception's text may echo a key."""
    info = {"stage": stage, "class": type(error).__name__, "message": redact(str(error), shapes=True)}
    where = where or (record.get(SOURCE) if isinstance(record, dict) else None)
    if where:
        info["where"] = where
    raw = getattr(error, "raw", None)  # a SchemaError keeps the model's text for inspection
    if raw is not None:
        info["raw"] = redact(raw) if isinstance(raw, str) else raw
    rid = record_id(record) if isinstance(record, dict) else None
    return {ERROR: info, ID: rid, "record": record}


def is_error_line(value: Any) -> TypeGuard[dict]:
    """Whether ``value`` is an error record as the write stage stores it in ``errors/``."""
    info = value.get(ERROR) if isinstance(value, dict) else None
    return isinstance(info, dict) and {"stage", "class", "message"} <= info.keys() and "record" in value


def foreign_reserved(record: dict) -> list[str]:
    """The reserved fields ``record`` carries that recipe did not write (empty: none, or ours)."""
    present = [key for key in RESERVED if key in record]
    if not present:
        return []

    def an_id(value: Any) -> bool:
        return isinstance(value, str) and bool(_HEX_ID.fullmatch(value))

    ours = (ERROR not in record and an_id(record.get(ID)) and (record.get(PARENT) is None or an_id(record[PARENT]))
            and isinstance(record.get(SOURCE, ""), str))
    return [] if ours else present


def with_provenance(record: dict, stage: str, entry: dict) -> dict:
    """``record`` with ``entry`` as ``_provenance[stage]``, earlier stages' entries kept (a record
    derived from another, by :func:`child`, inherits them)."""
    return {**record, PROVENANCE: {**(record.get(PROVENANCE) or {}), stage: entry}}


def root(value: Any, field: str, *id_parts: Any) -> dict:
    """An input record made from a config value (a seed): a string becomes ``{field: value}``, a
    dict is taken as the record; its ``_id`` is stable (``id_parts`` and its content), no parent."""
    record = dict(value) if isinstance(value, dict) else {field: value}
    record.setdefault(ID, make_id(*id_parts, json.dumps(record, sort_keys=True, default=str)))
    record.setdefault(PARENT, None)
    return record


def child(parent: dict, index: int, **fields: Any) -> dict:
    """A record derived from ``parent``: its fields, a new id, and ``_parent`` pointing back."""
    parent_id = record_id(parent)
    record = {k: v for k, v in parent.items() if k not in (ID, PARENT)}
    record.update(fields)
    record[ID] = make_id(parent_id, index)
    record[PARENT] = parent_id
    return record


def require_fields(record: dict, fields: Iterable[str], purpose: str) -> None:
    """The one check that a record has the fields a stage reads: a :class:`MissingFieldError`
    naming the first missing one and what the stage wanted it for."""
    from recipe.errors import MissingFieldError

    for name in fields:
        if name not in record:
            raise MissingFieldError(f"record has no field {name!r} to {purpose}")


def unencodable_field(value: Any, where: str = "") -> str | None:
    """The first field (``a.b[2]``) of ``value`` holding text no UTF-8 file can hold, a lone
    UTF-16 surrogate (from an input's ``\\ud800`` escape, say), as a key or a value; None if none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(the record)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            found = unencodable_field(key, name) if isinstance(key, str) else None
            found = found or unencodable_field(item, name)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = unencodable_field(item, f"{where}[{index}]")
            if found:
                return found
    return None


def surrogate_message(field: str) -> str:
    """The one wording for a value no UTF-8 file can hold (the reader and every writer say it)."""
    return (f"field {field!r} holds a lone UTF-16 surrogate, which UTF-8 (JSONL, Parquet) cannot store: "
            "fix that value in the input")
