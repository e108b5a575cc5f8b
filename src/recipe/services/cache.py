"""A durable request cache: a run never pays twice for the same answer.

SQLite in WAL mode, because it is the one store in the standard library that several
worker processes may write at once with atomic transactions: an entry is committed whole
or not at all, and survives ``kill -9`` of the writer. Each value also carries a SHA-256 of
its payload, so a damaged entry (a torn write on a filesystem that lies about fsync, or a
hand-edited file) is detected, ignored and re-requested - never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, digest TEXT NOT NULL, value TEXT NOT NULL)"


def request_key(parts: Any) -> str:
    """A stable hash of everything that determines an answer (canonical JSON, sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def pack(value: Any) -> tuple[str, str]:
    """An answer as stored by every cache backend: (SHA-256 of the payload, the JSON payload)."""
    payload = json.dumps({"v": value}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest(), payload


class Damaged(ValueError):
    """A stored entry whose checksum or payload does not hold: ignored and asked again."""


def unpack(digest: str, payload: str) -> Any:
    """The answer of a stored entry; :class:`Damaged` when it is not what was stored."""
    if hashlib.sha256(payload.encode()).hexdigest() != digest:
        raise Damaged("checksum mismatch")
    try:
        return json.loads(payload)["v"]
    except (ValueError, KeyError, TypeError):
        raise Damaged("unreadable payload") from None


class RequestCache:
    """``get(parts)`` / ``put(parts, value)`` for JSON-serialisable answers."""

    def __init__(self, directory: str | os.PathLike, filename: str = "requests.sqlite"):
        self.path = Path(directory).expanduser() / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.corrupt = 0

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            conn.execute(_SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get(self, parts: Any) -> Any | None:
        key = request_key(parts)
        row = self._connection().execute("SELECT digest, value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        digest, value = row
        if hashlib.sha256(value.encode()).hexdigest() != digest:
            self.corrupt += 1
            return None
        try:
            return json.loads(value)["v"]
        except (ValueError, KeyError, TypeError):
            self.corrupt += 1
            return None

    def put(self, parts: Any, value: Any) -> None:
        payload = json.dumps({"v": value}, ensure_ascii=False)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        self._connection().execute("INSERT OR REPLACE INTO responses (key, digest, value) VALUES (?, ?, ?)",
                                   (request_key(parts), digest, payload))

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def __getstate__(self) -> dict:  # connections stay behind; the path travels
        return {"path": self.path, "corrupt": 0}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
