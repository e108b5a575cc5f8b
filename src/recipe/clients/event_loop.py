"""One long-lived asyncio loop per process, on a daemon thread.

litellm binds a process-wide logging worker to the first loop it sees; ``asyncio.run``
per partition fights it (litellm issue 36548) and halves throughput. So every coroutine
in this process - the async client's calls, every Dask partition, the sync client - runs
on this one loop. It also makes the sync API work where a loop is already running
(Jupyter, inside a distributed worker), because we never block *that* loop.

Stopping a run (Ctrl-C, SIGTERM, a run-stopping error) goes through :func:`cancel_all`: every
task on the loop is cancelled at once, and callers waiting in :func:`run_sync` get
:class:`~recipe.errors.Interrupted` instead of a result. Without it the interpreter's shutdown
would refuse new futures under the requests still in flight, and each of them would be
recorded as a false error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from recipe.process_state import per_run

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_owner_pid: int | None = None
_cancelled = threading.Event()


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


def cancelled() -> bool:
    """Whether this process is stopping its run (see :func:`cancel_all`)."""
    return _cancelled.is_set()


def check_cancelled() -> None:
    """Raise :class:`~recipe.errors.Interrupted` if the run is stopping."""
    if _cancelled.is_set():
        from recipe.errors import Interrupted

        raise Interrupted("the run was interrupted")


def cancel_all() -> None:
    """Stop this process's work in flight: cancel every task on the loop. Stages refuse new
    partitions until :func:`reset_cancelled` (the next run); plain client calls are not refused.

    Safe from any thread and from a signal handler's aftermath; idempotent.
    """
    _cancelled.set()
    loop = _loop
    if loop is None or _owner_pid != os.getpid() or not loop.is_running():
        return

    def _cancel() -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    try:
        loop.call_soon_threadsafe(_cancel)
    except RuntimeError:  # the loop closed meanwhile
        pass


@per_run
def reset_cancelled() -> None:
    """A new run starts: accept work again (a long-lived worker outlives a stopped run)."""
    _cancelled.clear()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block the calling thread for its result.

    Raises :class:`~recipe.errors.Interrupted` when the run is stopped meanwhile.
    """
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_sync() called from the background loop itself; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except (concurrent.futures.CancelledError, asyncio.CancelledError):
        check_cancelled()
        raise
