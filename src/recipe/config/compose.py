"""Composing configs outside the CLI: notebooks, tests and users' own Dask workflows."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from recipe.config import paths, schema
from recipe.errors import ConfigError, refuse

_registered = False


def _input_or_sample(name: str, *, _root_: Any) -> Any:
    """``input`` when the user gave one (a path, a glob, or a list of them), else the recipe's
    shipped sample file."""
    given = _root_.get("input")
    if OmegaConf.is_list(given):
        return OmegaConf.create([str(p) for p in given])
    return str(given) if given else paths.sample_path(name)


def _list_schema(mode: str, n: Any, max_length: int = 200) -> DictConfig | None:
    """``${list_schema:${recipe.list_mode},N}``: a generating stage's list schema, only when
    ``list_mode`` is ``structured`` (direct and yaml keep NeMo Curator's free-text lists).

    A config node, not a dict: ``OmegaConf.resolve`` (``--cfg job --resolve``) writes the value
    back into the tree, which takes no plain dict."""
    if mode != "structured":
        return None
    from recipe.config.list_schema import list_schema

    return OmegaConf.create(list_schema(int(n) if n not in (None, "") else None, max_length=int(max_length)))


def setup() -> None:
    """Register the schema and resolvers once per process (idempotent)."""
    global _registered
    if _registered:
        return
    schema.register()
    OmegaConf.register_new_resolver("input_or_sample", _input_or_sample, replace=True)
    OmegaConf.register_new_resolver("sample", paths.sample_path, replace=True)
    OmegaConf.register_new_resolver("list_schema", _list_schema, replace=True)
    from recipe.config.designer_compile import records

    OmegaConf.register_new_resolver("designer_records", records, replace=True)  # a Data Designer config's n
    from recipe.config.identity import register_resolver

    register_resolver()  # ${recipe_run_dir:ROOT}: Hydra's run dir is the run folder
    _registered = True


def compose(overrides: Sequence[str] = (), config_name: str = "config",
            config_dirs: Sequence[str] = ()) -> DictConfig:
    """The composed, validated config for ``overrides``, as ``python -m recipe`` would see it.

    ``config_dirs`` are extra config dirs searched as Hydra's ``--config-dir`` would be (after the
    shipped configs); a user's own dir can also come in as the override
    ``hydra.searchpath=[file:///abs/dir]``. ``+model=NAME`` and ``model=NAME`` are the same choice.

    Does not change the working directory, writes nothing and leaves Hydra's global state as it
    found it (so it can be called inside a ``@hydra.main`` app). ``output_dir`` stays null unless
    overridden: :func:`recipe.run` then uses the config's run folder (``recipe.config.identity``).
    ``${oc.env:...}`` keys are not resolved here.
    """
    cfg = compose_unchecked(overrides, config_name=config_name, config_dirs=config_dirs)
    check(cfg)
    return cfg


def compose_unchecked(overrides: Sequence[str] = (), config_name: str = "config",
                      config_dirs: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """:func:`compose` without :func:`check`, for a caller that gathers the config's problems with
    its own (the CLI's precheck adds the backends') into one report. ``with_hydra`` keeps Hydra's
    own node (``hydra:``), which a run of the config needs (see :func:`without_hydra`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    setup()
    try:
        overrides = _with_config_dirs(model_choice(overrides, config_name), config_dirs)
        with _outside_any_app(), initialize_config_dir(config_dir=str(paths.config_dir()), job_name="recipe",
                                                       version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(one_line(exc)) from None
    except ValueError as exc:  # Hydra's own for `group=null` ("Config group override must be ...")
        nulls = [o for o in overrides if o.partition("=")[2].strip() == "null"]
        raise ConfigError(f"{', '.join(nulls)}: {one_line(exc)}" if nulls else one_line(exc)) from None
    except yaml.YAMLError as exc:  # a syntax error in a config file (often a user's --config-dir)
        raise ConfigError(yaml_error_line(exc)) from None
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` without Hydra's node: the config a job sees (as Hydra's ``run_job`` makes it)."""
    import copy

    from omegaconf import open_dict, read_write

    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


def model_choice(overrides: Sequence[str], config_name: str = "config") -> list[str]:
    """``+model=NAME`` written as ``model=NAME``, so that both forms choose a model option.

    The shipped primary config lists ``model: null`` in its defaults, which makes ``model=NAME``
    work, but Hydra (1.3) refuses ``+model=NAME`` then ("Multiple values for model"), and
    ``+model=NAME`` is the form the README has always documented. A user's own primary config
    (``--config-name``) may lack the group, so its overrides are left as they are.
    """
    if config_name != "config":
        return list(overrides)
    return [str(o)[1:] if str(o).startswith("+model=") else str(o) for o in overrides]


def _with_config_dirs(overrides: list[str], config_dirs: Sequence[str]) -> list[str]:
    """``config_dirs`` as entries of ``hydra.searchpath`` (Hydra's public way to add config dirs),
    before any the overrides already give."""
    if not config_dirs:
        return overrides
    entries = []
    for extra in config_dirs:
        extra = os.path.abspath(os.path.expanduser(str(extra)))
        if not os.path.isdir(extra):
            raise ConfigError(f"config directory not found: {extra}")
        entries.append(f"file://{extra}")
    rest = []
    for override in overrides:
        if override.split("=", 1)[0].lstrip("+") == "hydra.searchpath":
            from hydra.core.override_parser.overrides_parser import OverridesParser

            given = OverridesParser.create().parse_override(override).value()
            entries += [str(v) for v in (given if isinstance(given, list) else [given])]
        else:
            rest.append(override)
    quoted = ",".join("'" + e.replace("'", "\\'") + "'" for e in entries)  # Hydra's quoted strings
    return [*rest, f"hydra.searchpath=[{quoted}]"]


@contextmanager
def _outside_any_app() -> Iterator[None]:
    """Compose beside a running ``@hydra.main`` app: Hydra allows one initialized instance, so the
    app's is set aside (public GlobalHydra methods) and put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)


def check(cfg: Any) -> None:
    """Raise one ConfigError listing every problem with ``cfg``."""
    refuse(schema.validate(cfg))


_NOISE = ("full_key", "object_type", "Set the environment", "reference_type", "See https://hydra.cc")


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages, causes included, on one line without their debugging hints.

    ``Error merging override x=abc`` alone does not say what is wrong: the reason is in the
    exception's ``__cause__`` (``Value 'abc' ... could not be converted to Float``).
    """
    parts: list[str] = []
    seen: set[int] = set()
    first = exc
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith(_NOISE)]
        message = " ".join(lines)
        if message and not any(message in p for p in parts):
            parts.append(message)
        cause = cause.__cause__
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
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an unset environment variable, most often
        message = one_line(exc)
        if "Environment variable" in message and "not found" in message:
            name = message.split("'")[1] if "'" in message else message
            raise ConfigError(f"environment variable {name} is not set: export it with your API key") from None
        raise ConfigError(message) from None
    if not isinstance(container, dict):
        raise ConfigError(f"the config must be a mapping, not a {type(container).__name__}")
    return container


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
