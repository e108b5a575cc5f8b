"""recipe: declarative, config-driven synthetic-data pipelines on any LLM litellm reaches.

Importing the package is cheap and offline: litellm, Dask and Hydra are imported only when
a client is built or a config composed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recipe.errors import ConfigError, InputError, LLMError, ParseError, RecipeError, SchemaError
from recipe.clients.litellm_setup import offline_environment
from recipe.config.paths import package_version

offline_environment()  # before anything can import litellm, here or in a Dask worker



#: Written into every run's stats.json and dataset card, so a result says what made it.
__version__ = package_version()

__all__ = ["__version__", "compose", "build_client", "run", "from_data_designer", "ClientSpec", "RecipeError", "ConfigError", "InputError",
           "LLMError", "ParseError", "SchemaError"]

if TYPE_CHECKING:  # pragma: no cover
    from recipe.engine.plan import compose
    from recipe.clients.factory import ClientSpec, build_client
    from recipe.engine.runner import run
    from recipe.engine.designer import from_data_designer

_LAZY = {"compose": "recipe.engine.plan", "build_client": "recipe.clients.factory", "ClientSpec": "recipe.clients.factory",
         "run": "recipe.engine.runner", "from_data_designer": "recipe.engine.designer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recipe' has no attribute {name!r}")
