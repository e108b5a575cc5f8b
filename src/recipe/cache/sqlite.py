"""A durable request cache: a run never pays twice for the same answer.

SQLite in WAL mode, because it is the one store in the standard library that several
worker processes may write at once with atomic transactions: an entry is committed whole
or not at all, and survives ``kill -9`` of the writer. Each value also carries a SHA-256 of
its payload, so a damaged entry (a torn write on a filesystem that lies about fsync, or a
hand-edited file) is detected, ignored and re-requested - never served. (diskcache, installed
as a dependency of ``llm``, also sits on SQLite and bounds its size, but it has no checksum,
its last release is from 2023, and eviction by least recent use is a few lines here.)

SQLite's locks do not work on NFS and similar network filesystems: keep ``cache.dir`` on a
local disk. The cache is bounded (``max_bytes``): the least recently used entries go first.

Calls from coroutines go through :meth:`RequestCache.aget` / :meth:`RequestCache.aput`, which
run on the cache's own threads: a slow disk or a lock held by another process never stalls
the event loop that every request of the process shares.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = ("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, digest TEXT NOT NULL, value TEXT NOT NULL, "
           "last_used REAL NOT NULL DEFAULT 0)")
_INDEX = "CREATE INDEX IF NOT EXISTS responses_last_used ON responses (last_used)"
BUSY_TIMEOUT = 20.0  # seconds to wait for another process's lock before giving up (then: a live request)
_THREADS = 4
_prepare_lock = threading.Lock()
_prepared: set[tuple[int, str]] = set()  # (process, cache file) already in WAL mode with its table


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


class OffLoop:
    """``aget``/``aput`` for a store whose ``get``/``put`` block: they run on the store's own
    threads (made again after a fork), never on the event loop that every request shares."""

    _thread_prefix = "recipe-cache"
    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    _executor_pid: int | None = None

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix=self._thread_prefix)
            self._executor_pid = os.getpid()
        return self._executor

    def get(self, parts: Any) -> Any | None:  # the store's blocking read
        raise NotImplementedError

    def put(self, parts: Any, value: Any) -> None:  # the store's blocking write
        raise NotImplementedError

    async def aget(self, parts: Any) -> Any | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.get, parts)

    async def aput(self, parts: Any, value: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.put, parts, value)


class RequestCache(OffLoop):
    """``get(parts)`` / ``put(parts, value)`` for JSON-serialisable answers (``aget``/``aput`` off-loop).

    Args:
        directory: where ``requests.sqlite`` lives (a local disk, not NFS).
        max_bytes: the bound on the entries' size; least recently used entries are evicted
            beyond it. None: unbounded.
        busy_timeout: seconds to wait for another process's lock before the cache gives up
            (the request then goes out live).
    """

    def __init__(self, directory: str | os.PathLike, filename: str = "requests.sqlite",
                 max_bytes: int | None = None, busy_timeout: float = BUSY_TIMEOUT):
        self.path = Path(directory).expanduser() / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes) if max_bytes else None
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_pid: int | None = None
        self._evict_lock = threading.Lock()
        self.corrupt = 0
        self.evicted = 0

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA synchronous=NORMAL")  # per connection; durable across process crashes
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """WAL mode and the table, once per file and process.

        Switching a fresh file to WAL takes a lock that SQLite does not wait for (the busy timeout
        does not apply): the cache's threads opening a new file together failed about one time in
        twenty with "database is locked", and the cache was then bypassed for the whole run. So one
        thread of this process prepares the file, and a race with another process is retried.
        """
        key = (os.getpid(), str(self.path))
        with _prepare_lock:
            if key in _prepared:
                return
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(_SCHEMA)
                    columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
                    if "last_used" not in columns:  # a cache written before the bound existed
                        conn.execute("ALTER TABLE responses ADD COLUMN last_used REAL NOT NULL DEFAULT 0")
                    conn.execute(_INDEX)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            _prepared.add(key)

    def get(self, parts: Any) -> Any | None:
        key = request_key(parts)
        conn = self._connection()
        row = conn.execute("SELECT digest, value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            answer = unpack(*row)
        except Damaged:
            self.corrupt += 1
            return None
        if self.max_bytes:  # recency only matters when something may be evicted
            conn.execute("UPDATE responses SET last_used = ? WHERE key = ?", (time.time(), key))
        return answer

    def put(self, parts: Any, value: Any) -> None:
        digest, payload = pack(value)
        conn = self._connection()
        conn.execute("INSERT OR REPLACE INTO responses (key, digest, value, last_used) VALUES (?, ?, ?, ?)",
                     (request_key(parts), digest, payload, time.time()))
        if self.max_bytes:
            self._evict(conn)

    def size_bytes(self) -> int:
        """Bytes the entries occupy (pages in use, not free pages waiting for reuse)."""
        conn = self._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Least recently used entries out until the entries fit in 90% of ``max_bytes``."""
        if self.max_bytes is None or self.size_bytes() <= self.max_bytes:
            return
        with self._evict_lock:
            target = 0.9 * self.max_bytes
            while (size := self.size_bytes()) > target:
                count = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
                if count <= 1:
                    break
                share = max(1, int(count * (1 - target / size)) + 1)
                deleted = conn.execute("DELETE FROM responses WHERE key IN (SELECT key FROM responses "
                                       "ORDER BY last_used LIMIT ?)", (share,)).rowcount
                self.evicted += deleted
                if not deleted:
                    break
            conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back to the disk

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def __getstate__(self) -> dict:  # connections and threads stay behind; the path travels
        return {"path": self.path, "max_bytes": self.max_bytes, "busy_timeout": self.busy_timeout,
                "corrupt": 0, "evicted": 0}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._executor, self._executor_pid = None, None
        self._evict_lock = threading.Lock()
