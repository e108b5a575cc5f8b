"""Where the shipped configs live: in the wheel (``recipe/conf``) or in a checkout (``conf/``).

In a checkout, ``conf/recipe`` is a symlink to the top-level ``recipes/`` so that Hydra sees
the recipes as the ``recipe`` group; the wheel build copies both into ``recipe/conf``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def config_dir() -> Path:
    """The directory holding ``config.yaml``, ``model/``, ``backend/``, ... and ``recipe/``."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recipe's configs are missing (looked in {_PACKAGE / 'conf'})")


def recipes_dir() -> Path:
    return config_dir() / "recipe"


def sample_path(name: str) -> str:
    """A sample input shipped beside the recipes (``recipes/data/NAME``)."""
    return str(recipes_dir() / "data" / name)
