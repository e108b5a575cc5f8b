"""Functions named in configs as ``"package.module:function"`` (filter predicates, map stages)."""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable

from recipe.errors import ConfigError


def load_function(path: str | Callable) -> Callable:
    """``"package.module:function"`` -> the function (a callable is returned as is)."""
    if callable(path):
        return path
    return _import(str(path))


@lru_cache(maxsize=256)
def _import(path: str) -> Callable:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"function {path!r} must be written 'module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"function {path!r} not found: {exc}") from None
