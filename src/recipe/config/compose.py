"""Composing configs outside the CLI: notebooks, tests and users' own Dask workflows."""

from __future__ import annotations

import os
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from recipe.config import paths, schema
from recipe.errors import ConfigError

_registered = False


def _input_or_sample(name: str, *, _root_: Any) -> str:
    """``input`` when the user gave one, else the recipe's shipped sample file."""
    given = _root_.get("input")
    return str(given) if given else paths.sample_path(name)


def _list_schema(mode: str, n: Any, max_length: int = 200) -> dict | None:
    """``${list_schema:${recipe.list_mode},N}``: a generating stage's list schema, only when
    ``list_mode`` is ``structured`` (direct and yaml keep NeMo Curator's free-text lists)."""
    if mode != "structured":
        return None
    from recipe.services.structured_output import list_schema

    return list_schema(int(n) if n not in (None, "") else None, max_length=int(max_length))


def setup() -> None:
    """Register the schema and resolvers once per process (idempotent)."""
    global _registered
    if _registered:
        return
    schema.register()
    OmegaConf.register_new_resolver("input_or_sample", _input_or_sample, replace=True)
    OmegaConf.register_new_resolver("sample", paths.sample_path, replace=True)
    OmegaConf.register_new_resolver("list_schema", _list_schema, replace=True)
    from recipe.run_identity import register_resolver

    register_resolver()  # ${recipe_run_dir:ROOT}: Hydra's run dir is the run folder
    _registered = True


def compose(overrides: Sequence[str] = (), config_name: str = "config",
            config_dirs: Sequence[str] = ()) -> DictConfig:
    """The composed, validated config for ``overrides``, as ``python -m recipe`` would see it.

    ``config_dirs`` are extra config dirs searched as Hydra's ``--config-dir`` would be; a user's
    own dir can also come in as the override ``hydra.searchpath=[file:///abs/dir]``.

    Does not change the working directory, writes nothing and leaves Hydra's global state as it
    found it (so it can be called inside a ``@hydra.main`` app). ``output_dir`` stays null unless
    overridden: :func:`recipe.run` then uses the config's run folder (``recipe.run_identity``).
    ``${oc.env:...}`` keys are not resolved here.
    """
    from hydra import compose as hydra_compose
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    setup()
    saved = Singleton._instances.pop(GlobalHydra, None)
    try:
        version.setbase("1.3")
        search_path = create_config_search_path(str(paths.config_dir()))
        for extra in config_dirs:
            extra = os.path.abspath(os.path.expanduser(str(extra)))
            if not os.path.isdir(extra):
                raise ConfigError(f"config directory not found: {extra}")
            search_path.prepend(provider="command-line", path=f"file://{extra}",
                                anchor=SearchPathQuery(provider="schema"))
        Hydra.create_main_hydra2(task_name="recipe", config_search_path=search_path)
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(one_line(exc)) from None
    except yaml.YAMLError as exc:  # a syntax error in a config file (often a user's --config-dir)
        raise ConfigError(yaml_error_line(exc)) from None
    finally:
        Singleton._instances.pop(GlobalHydra, None)
        if saved is not None:
            Singleton._instances[GlobalHydra] = saved
    check(cfg)
    return cfg


def check(cfg: Any) -> None:
    """Raise one ConfigError listing every problem with ``cfg``."""
    problems = schema.validate(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


_NOISE = ("full_key", "object_type", "Set the environment", "reference_type", "See https://hydra.cc")


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages, causes included, on one line without their debugging hints.

    ``Error merging override x=abc`` alone does not say what is wrong: the reason is in the
    exception's ``__cause__`` (``Value 'abc' ... could not be converted to Float``).
    """
    parts: list[str] = []
    seen: set[int] = set()
    first = exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines()]
        lines = [l for l in lines if l and not l.startswith(_NOISE)]
        message = " ".join(lines)
        if message and not any(message in p for p in parts):
            parts.append(message)
        exc = exc.__cause__
    message = ": ".join(parts) or "invalid config"
    override = getattr(first, "override", None)  # OverrideParseException: name what failed to parse
    if isinstance(override, str) and override not in message:
        message = f"cannot parse override {override!r}: {message}"
    if "no viable alternative" in message or "mismatched input" in message or "extraneous input" in message:
        message += (" (quote values with spaces, braces, commas or '=' for Hydra, inside shell quotes: "
                    "\"recipe.prompt='Answer: {{ question }}'\")")
    return message[:800]


def yaml_error_line(exc: "yaml.YAMLError") -> str:
    """``file:line:column: problem`` for a YAML syntax error (PyYAML's message spans 4 lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
    return f"{where}YAML syntax error: {problem}" + (f" ({context})" if context else "")


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
