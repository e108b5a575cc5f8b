"""Importing and configuring litellm once per process.

litellm costs seconds of CPU to import and, by default, fetches its cost map from the
internet at import time. Everything that needs it goes through :func:`get_litellm`, so
``import recipe``, ``--help`` and ``--cfg job`` never pay for it, and no process (Dask
workers included) ever makes that network call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import warnings
from types import ModuleType

_lock = threading.Lock()
_module: ModuleType | None = None


def offline_environment() -> None:
    """Set the variables that stop litellm's import-time network fetch; inherited by workers."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")


def get_litellm() -> ModuleType:
    """Import litellm on first use, quiet and offline."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            offline_environment()
            # pydantic >= 2.12 warns about litellm's ReadOnly TypedDict items, at import and when
            # litellm builds its types lazily: noise on stderr that says nothing about the run.
            warnings.filterwarnings("ignore", message=".*ReadOnly.* qualifier", category=UserWarning)
            _import_without_collections()
            import litellm  # the module just imported, now from sys.modules: typed, so its settings are checked

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.drop_params = False
            # No logging callback is ever registered, so nothing is logged either way; the
            # redaction pass this flag enables cost ~15% of litellm's CPU per call (bench/RESULTS.md).
            litellm.turn_off_message_logging = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
                logging.getLogger(name).setLevel(logging.ERROR)
            _module = litellm
            atexit.register(_close_connections)
    return _module


def loaded() -> bool:
    """litellm is already imported in this process (asking costs nothing)."""
    return _module is not None


@contextlib.contextmanager
def unlogged():
    """litellm's own logging off for the calls made inside (we keep our own counters, and no
    litellm callback is ever registered).

    Every call through litellm's ``@client`` wrapper otherwise queues a success handler on its
    ``LoggingWorker``, callbacks or not. For a completed batch that handler downloads the batch's
    output file a second time to price it, and handlers still queued when the process exits print
    ``cannot schedule new futures after shutdown`` tracebacks after the run's summary. litellm has
    no global switch: its internal-call flag (the one its own nested calls set) skips the handler
    for the calls of this task only.
    """
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:  # another litellm: its handlers run, as before
        yield
        return
    token = is_internal_call.set(True)
    try:
        yield
    finally:
        is_internal_call.reset(token)


def _import_without_collections() -> ModuleType:
    """``import litellm`` with the cyclic garbage collector paused, then its objects frozen.

    The import leaves about 520,000 tracked objects that live as long as the process; on the way the
    collector ran six full passes over them: a quarter of the import (0.7 of 2.9 s, bench/RESULTS.md).
    Nothing the import creates is garbage, so pausing loses nothing; ``gc.freeze`` then keeps
    later full collections of the run from walking that graph again.
    """
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        import litellm
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()
    return litellm


_preloading: threading.Thread | None = None


def preload() -> None:
    """Start importing litellm on a daemon thread, so a run's first request need not wait for it.

    Each Dask worker calls this as it joins a run: its import overlaps with the driver's planning
    in another process. The CLI's own process does not: under one GIL a thread importing beside
    the main thread's composing made the first request later, not sooner (median 2.64 against
    2.50 s, bench/RESULTS.md). ``get_litellm`` returns what the thread imported (the lock is shared).
    """
    global _preloading
    if _module is not None or _preloading is not None:
        return
    _preloading = threading.Thread(target=_quiet_import, name="recipe-import-litellm", daemon=True)
    _preloading.start()


def _quiet_import() -> None:
    try:
        get_litellm()
    except Exception:  # the first real use raises it again, where it can be reported
        pass


def _close_connections() -> None:
    """Close litellm's pooled HTTP sessions at exit, so aiohttp does not complain at teardown."""
    from recipe.clients.event_loop import run_sync
    from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

    try:
        run_sync(asyncio.wait_for(close_litellm_async_clients(), timeout=5))
    except Exception:  # best effort: the process is ending anyway
        pass


_unpriced: set[str] = set()


def ensure_model_known(litellm_model: str, provider: str) -> None:
    """Give models litellm has no entry for (local servers, custom names) a zero-price entry, once.

    Without one, litellm searches its whole cost map by generalisation on every response to
    price it - about a fifth of its per-call CPU. Models registered here are remembered so the
    run's cost is reported as unknown (null), not as free.
    """
    litellm = get_litellm()
    if litellm_model in litellm.model_cost or litellm_model in _unpriced:
        return
    model_name = litellm_model.split("/", 1)[-1]
    if model_name in litellm.model_cost:
        return
    with _lock:
        litellm.register_model({litellm_model: {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                                                "litellm_provider": provider, "mode": "chat"}})
        _unpriced.add(litellm_model)


def is_unpriced(litellm_model: str) -> bool:
    return litellm_model in _unpriced
