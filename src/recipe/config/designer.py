"""Reading a NeMo Data Designer config: its file (YAML or JSON) or builder, as plain dicts, checked
by Data Designer's own models when the ``recipe[designer]`` extra is installed.

What Data Designer accepts, we accept: with the extra, the config goes through its
``DataDesignerConfig`` model (the same checks ``data-designer validate`` makes), and the first of
its messages becomes one ``ConfigError`` line. Without the extra, the file is read as it is and
the compiler (:mod:`recipe.config.designer_compile`) checks what it uses; the user is told which
extra to install only where the models are needed (a builder object).
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from recipe.errors import ConfigError

EXTRA = "recipe[designer]"
_INSTALL = f"install the extra: pip install '{EXTRA}'"


def installed() -> bool:
    """Whether Data Designer's config models can be imported here."""
    try:
        import data_designer.config  # noqa: F401
    except ImportError:
        return False
    return True


def read_file(path: str) -> dict:
    """The config in ``path`` as a dict: ``{model_configs, columns, constraints, seed_config,
    processors}`` (a builder's export, ``{data_designer: {...}}``, is unwrapped)."""
    full = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(full):
        raise ConfigError(f"designer={path}: no such file (a Data Designer config, .yaml or .json)")
    try:
        with open(full, encoding="utf-8") as fh:
            text = fh.read()
        data = json.loads(text) if full.endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"designer={path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"designer={path}:{exc.lineno}:{exc.colno}: JSON syntax error: {exc.msg}") from None
    except yaml.YAMLError as exc:
        from recipe.config.compose import yaml_error_line

        raise ConfigError(f"designer={path}: {yaml_error_line(exc)}") from None
    return unwrap(data, f"designer={path}")


def unwrap(data: Any, where: str) -> dict:
    """The ``DataDesignerConfig`` part of ``data`` (a builder's export nests it under ``data_designer``)."""
    if isinstance(data, dict) and isinstance(data.get("data_designer"), dict):
        data = data["data_designer"]
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list):
        raise ConfigError(f"{where}: not a Data Designer config (it needs a list of columns)")
    return data


def from_builder(builder: Any) -> dict:
    """A ``DataDesignerConfigBuilder``'s config as plain dicts (its JSON form)."""
    if not installed():
        raise ConfigError(f"a DataDesignerConfigBuilder needs Data Designer's config models: {_INSTALL}")
    try:
        config = builder.build()
    except Exception as exc:  # Data Designer's own checks of the builder
        raise ConfigError(f"Data Designer refused the config: {_first_line(exc)}") from None
    return unwrap(config.model_dump(mode="json", exclude_unset=False), "builder")


def validate(data: dict, where: str) -> dict:
    """``data`` checked by Data Designer's ``DataDesignerConfig`` (when installed), as its JSON form:
    a pydantic model given as an ``output_format`` becomes its JSON schema, defaults are filled in.
    Without the extra, ``data`` comes back as it is."""
    if not installed():
        return data
    from data_designer.config import DataDesignerConfigBuilder

    try:  # the builder's checks too (references between columns, processors), as Data Designer runs them
        config = DataDesignerConfigBuilder.from_config(data).build()
    except Exception as exc:
        raise ConfigError(f"{where}: Data Designer refused the config: {_first_line(exc)}") from None
    return config.model_dump(mode="json")


def load(source: Any) -> tuple[dict, str]:
    """``(config, name)`` for a path or a builder: the config validated, and a name for the recipe."""
    if isinstance(source, (str, os.PathLike)):
        where = f"designer={source}"
        data = validate(read_file(str(source)), where)
        stem = os.path.splitext(os.path.basename(str(source)))[0]
    elif isinstance(source, dict):
        where = "designer config"
        data = validate(unwrap(source, where), where)
        stem = "config"
    elif hasattr(source, "build"):
        data, stem = from_builder(source), "builder"
    else:
        raise ConfigError(f"a Data Designer config is a path, a dict or a DataDesignerConfigBuilder, not {type(source).__name__}")
    return data, "designer_" + "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


def _first_line(exc: BaseException) -> str:
    """A pydantic ValidationError's (or Data Designer's) message as one line: each error's place and text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors()
        except Exception:
            found = None
        if found:
            parts = []
            for error in found[:3]:
                where = ".".join(str(p) for p in error.get("loc", ()))
                parts.append(f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", "")))
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            return "; ".join(parts) + more
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:600] or type(exc).__name__
