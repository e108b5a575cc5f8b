"""One long-lived asyncio loop per process, on a daemon thread.

litellm binds a process-wide logging worker to the first loop it sees; ``asyncio.run``
per partition fights it (litellm issue 36548) and halves throughput. So every coroutine
in this process - the async client's calls, every Dask partition, the sync client - runs
on this one loop. It also makes the sync API work where a loop is already running
(Jupyter, inside a distributed worker), because we never block *that* loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_owner_pid: int | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use (and again after a fork)."""
    global _loop, _owner_pid
    if _loop is not None and _owner_pid == os.getpid() and _loop.is_running():
        return _loop
    with _lock:
        if _loop is None or _owner_pid != os.getpid() or not _loop.is_running():
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def _serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=_serve, name="recipe-event-loop", daemon=True).start()
            started.wait()
            _loop, _owner_pid = loop, os.getpid()
    return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block the calling thread for its result."""
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_sync() called from the background loop itself; await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()
