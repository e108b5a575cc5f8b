"""One request cache for a whole cluster: Redis (``cache.url=redis://host:port/0``).

The SQLite cache is per machine. With Redis, an answer paid for on one machine is a hit on every
other. Entries are the SQLite cache's: the same key (:func:`~recipe.cache.sqlite.request_key`)
and the same checksummed payload (:func:`~recipe.cache.sqlite.pack`), one Redis hash per
request written by one ``HSET`` (atomic: a reader sees both fields or neither). A damaged entry
is ignored and asked again, never served.

The URL travels with the tasks, so it must hold no password: each process reads
``REDIS_PASSWORD`` from its own environment instead.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from recipe.errors import ConfigError
from recipe.cache.sqlite import Damaged, OffLoop, pack, request_key, unpack

PREFIX = "recipe:request:"  # every key of ours starts with it: a shared Redis may hold others
SCHEMES = ("redis", "rediss", "unix")
TIMEOUT = 10.0  # seconds for a connect or a command before the cache counts as failed


def check_url(url: str) -> None:
    """Refuse what cannot work, before anything starts (one line, exit 2 at the CLI)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"cache.url={url!r}: give a redis://host:port/db URL (or rediss://, unix://)")
    if parts.password:
        raise ConfigError("cache.url holds a password: remove it from the URL (it would travel with every task) "
                          "and export REDIS_PASSWORD on each machine instead")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError("cache.url=redis://... needs the redis package: pip install 'recipe[redis]'") from None


class RedisCache(OffLoop):
    """``get``/``put`` (and ``aget``/``aput`` off the event loop), as :class:`RequestCache`."""

    _thread_prefix = "recipe-redis"

    def __init__(self, url: str):
        self._setup(url)

    def _setup(self, url: str) -> None:
        check_url(url)
        self.url = url
        self.corrupt = 0
        self._client = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:  # what error messages name
        return self.url

    def _redis(self):
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    import redis

                    self._client = redis.Redis.from_url(self.url, password=os.environ.get("REDIS_PASSWORD"),
                                                        socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                                        decode_responses=True)
                    self._pid = os.getpid()
        return self._client

    def ping(self) -> None:
        """Reach the server once (the runner calls it on the driver): one line when it is not there."""
        import redis

        try:
            self._redis().ping()
        except redis.RedisError as exc:
            raise ConfigError(f"cache.url={self.url}: cannot reach Redis: {exc}") from None

    def get(self, parts: Any) -> Any | None:
        digest, payload = self._redis().hmget(PREFIX + request_key(parts), "digest", "value")
        if digest is None or payload is None:
            return None
        try:
            return unpack(digest, payload)
        except Damaged:
            self.corrupt += 1
            return None

    def put(self, parts: Any, value: Any) -> None:
        digest, payload = pack(value)
        self._redis().hset(PREFIX + request_key(parts), mapping={"digest": digest, "value": payload})

    def __len__(self) -> int:
        return sum(1 for _ in self._redis().scan_iter(match=PREFIX + "*", count=1000))

    def __getstate__(self) -> dict:  # connections and threads stay behind; the URL travels
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self._setup(state["url"])
