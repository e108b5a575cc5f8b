"""Composing configs outside the CLI: notebooks, tests and users' own Dask workflows."""

from __future__ import annotations

import os
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from recipe.config import paths, schema
from recipe.errors import ConfigError

_registered = False


def _input_or_sample(name: str, *, _root_: Any) -> str:
    """``input`` when the user gave one, else the recipe's shipped sample file."""
    given = _root_.get("input")
    return str(given) if given else paths.sample_path(name)


def setup() -> None:
    """Register the schema and resolvers once per process (idempotent)."""
    global _registered
    if _registered:
        return
    schema.register()
    OmegaConf.register_new_resolver("input_or_sample", _input_or_sample, replace=True)
    OmegaConf.register_new_resolver("sample", paths.sample_path, replace=True)
    _registered = True


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed, validated config for ``overrides``, as ``python -m recipe`` would see it.

    Does not change the working directory and writes nothing. ``output_dir`` stays null unless
    overridden: :func:`recipe.run` then needs one.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    setup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(paths.config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    check(cfg)
    return cfg


def check(cfg: Any) -> None:
    """Raise one ConfigError listing every problem with ``cfg``."""
    problems = schema.validate(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages, without their stack-trace hints, on one line."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [l for l in lines if l and not l.startswith(("full_key", "object_type", "Set the environment", "reference_type"))]
    return " ".join(lines)[:600]


def resolved_container(cfg: Any) -> dict:
    """A plain dict with every interpolation resolved (secrets included: never write it out)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an unset environment variable, most often
        message = one_line(exc)
        if "Environment variable" in message and "not found" in message:
            name = message.split("'")[1] if "'" in message else message
            raise ConfigError(f"environment variable {name} is not set: export it with your API key") from None
        raise ConfigError(message) from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
