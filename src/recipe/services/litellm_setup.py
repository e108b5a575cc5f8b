"""Importing and configuring litellm once per process.

litellm costs seconds of CPU to import and, by default, fetches its cost map from the
internet at import time. Everything that needs it goes through :func:`get_litellm`, so
``import recipe``, ``--help`` and ``--cfg job`` never pay for it, and no process (Dask
workers included) ever makes that network call.
"""

from __future__ import annotations

import logging
import os
import threading
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
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.drop_params = False
            litellm.turn_off_message_logging = True
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
                logging.getLogger(name).setLevel(logging.ERROR)
            _module = litellm
    return _module
