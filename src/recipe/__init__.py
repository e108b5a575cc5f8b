"""recipe: declarative, config-driven synthetic-data pipelines on any LLM litellm reaches.

Importing the package is cheap and offline: litellm, Dask and Hydra are imported only when
a client is built or a config composed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recipe.errors import ConfigError, InputError, LLMError, ParseError, RecipeError, SchemaError
from recipe.services.litellm_setup import offline_environment

offline_environment()  # before anything can import litellm, here or in a Dask worker

__all__ = ["compose", "build_client", "run", "ClientSpec", "RecipeError", "ConfigError", "InputError",
           "LLMError", "ParseError", "SchemaError"]

if TYPE_CHECKING:  # pragma: no cover
    from recipe.config.compose import compose
    from recipe.factory import ClientSpec, build_client
    from recipe.runner import run

_LAZY = {"compose": "recipe.config.compose", "build_client": "recipe.factory", "ClientSpec": "recipe.factory",
         "run": "recipe.runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recipe' has no attribute {name!r}")
