"""Running a Data Designer config: ``designer=PATH`` on the command line and
``recipe.from_data_designer``, both a compiled recipe composed like any shipped one.

The config is read and checked (:mod:`recipe.config.designer`), compiled into a recipe file
(:mod:`recipe.config.designer_compile`) in a scratch config dir, and composed with
``recipe=<its name>`` and that dir on Hydra's search path, after the model and backend its most
used model alias asks for and before the user's own overrides, which therefore all still apply
(``+model=...``, ``backend.batch=true``, ``target.records=N``, ``dask.address=...``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Sequence

import yaml

from recipe.errors import ConfigError

KEY = "designer"


def split(overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(PATH, the other overrides)`` for a ``designer=PATH`` (or ``+designer=PATH``) among them."""
    path, rest = None, []
    for override in overrides:
        key, eq, value = str(override).partition("=")
        if eq and key.lstrip("+") == KEY:
            if path is not None:
                raise ConfigError("designer= is given twice: give one Data Designer config")
            if not value.strip():
                raise ConfigError("designer= needs the path of a Data Designer config (.yaml or .json)")
            path = value.strip().strip("'\"")
        else:
            rest.append(str(override))
    return path, rest


def _user_sets(overrides: Sequence[str], prefix: str) -> bool:
    keys = [str(o).partition("=")[0].lstrip("+~") for o in overrides]
    return any(k == prefix or k.startswith(prefix + ".") for k in keys)


def compiled_overrides(source: Any, overrides: Sequence[str] = ()) -> tuple[list[str], list[str], str]:
    """``(overrides, notes, config dir)``: the overrides that compose ``source``'s compiled recipe,
    the user's ``overrides`` last; the caller removes the config dir when done with it."""
    from recipe.config.designer import load
    from recipe.config.designer_compile import compile_recipe, run_overrides

    from recipe.config.designer import EXTRA, installed

    data, name = load(source)
    recipe, notes = compile_recipe(data, name)
    if not installed():
        notes.insert(0, f"Data Designer's config models are not installed, so the config was read without its "
                        f"checks: pip install '{EXTRA}'")
    folder = tempfile.mkdtemp(prefix="recipe-designer-")
    os.makedirs(os.path.join(folder, "recipe"))
    with open(os.path.join(folder, "recipe", f"{name}.yaml"), "w", encoding="utf-8") as fh:
        fh.write("# Compiled from a Data Designer config by recipe\n")
        yaml.safe_dump(recipe, fh, sort_keys=False, allow_unicode=True)
    first = [o for o in run_overrides(data)
             if not (_user_sets(overrides, "backend") and o.startswith("backend="))
             and not ((_user_sets(overrides, "model") or _user_sets(overrides, "model.name")) and o.startswith("model."))]
    searchpath, rest = [f"file://{folder}"], []
    for override in overrides:
        if str(override).partition("=")[0].lstrip("+") == "hydra.searchpath":
            from hydra.core.override_parser.overrides_parser import OverridesParser

            given = OverridesParser.create().parse_override(str(override)).value()
            searchpath += [str(v) for v in (given if isinstance(given, list) else [given])]
        else:
            rest.append(str(override))
    quoted = ",".join("'" + e.replace("'", "\\'") + "'" for e in searchpath)
    return [*first, f"recipe={name}", f"hydra.searchpath=[{quoted}]", *rest], notes, folder


def from_data_designer(source: Any, overrides: Sequence[str] = ()) -> Any:
    """The composed config (for :func:`recipe.run`) of a Data Designer config: a path to its YAML or
    JSON file, its dict, or a ``DataDesignerConfigBuilder`` (needs ``recipe[designer]``).

    ``overrides`` apply as on the command line: ``["target.records=100", "backend.batch=true"]``.
    """
    from recipe.engine.plan import compose

    composed, _, folder = compiled_overrides(source, overrides)
    try:
        return compose(composed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
