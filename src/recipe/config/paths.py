"""What the installed package is: where its shipped configs live (the wheel's ``recipe/conf`` or a
checkout's ``conf/``) and its version.

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


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed package's version (pyproject.toml's, as pip installed it): written into every
    run's stats.json and dataset card, so a result says what made it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recipe")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"
