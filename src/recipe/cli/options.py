"""The recipes and model options ``python -m recipe --help`` lists, found from the config files.

Hydra's own help lists each group's option names; a newcomer also needs to know what each one
is. The names come from Hydra's search path (the shipped configs, ``--config-dir`` and
``hydra.searchpath`` alike), the descriptions from the files themselves: a recipe's first
comment sentence, a model option's ``model.description``. Nothing here is written by hand, so a
new file shows up in ``--help`` as soon as it exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

#: The groups ``--help`` describes, and how each file says what it is.
GROUPS = ("recipe", "model")


def first_sentence(text: str) -> str:
    """A recipe file's leading comment, up to its first sentence (or the first command line)."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.startswith("   ") or body.strip().startswith("python -m"):  # an example command
            break
        lines.append(body.strip())
    joined = " ".join(lines).strip()
    match = re.match(r"(.+?[.;])(\s|$)", joined)
    return (match.group(1) if match else joined).rstrip(".;:")


def model_description(text: str) -> str:
    """A model option's ``model.description`` (``@package _global_`` files)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return ""
    model = data.get("model") if isinstance(data, dict) else None
    return str(model.get("description") or "") if isinstance(model, dict) else ""


def describe_file(group: str, path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return first_sentence(text) if group == "recipe" else model_description(text)


def options(group: str, names: list[str], dirs: list[Path]) -> list[tuple[str, str]]:
    """``(name, description)`` for each option of ``group``; the first dir holding its file wins."""
    out = []
    for name in names:
        description = ""
        for directory in dirs:
            path = directory / group / f"{name}.yaml"
            if path.is_file():
                description = describe_file(group, path)
                break
        out.append((name, description))
    return out


def listing(group: str) -> str:
    """The ``--help`` block of ``group`` (a resolver: ``${recipe_options:recipe}``), one option per
    line with what it is, from Hydra's search path while it prints the help."""
    from hydra.core.global_hydra import GlobalHydra

    from recipe.config import paths

    dirs: list[Path] = []
    names: list[str] = []
    if GlobalHydra.instance().is_initialized():
        loader = GlobalHydra.instance().config_loader()
        names = sorted(loader.get_group_options(group))
        dirs = [Path(source.path) for source in loader.get_sources() if source.scheme() == "file"]
    dirs.append(paths.config_dir())
    if not names:
        names = sorted(p.stem for p in (paths.config_dir() / group).glob("*.yaml"))
    rows = options(group, names, dirs)
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"  {name:<{width}}  {text}".rstrip() for name, text in rows)


def register() -> None:
    """The ``recipe_options`` resolver the help template in ``conf/config.yaml`` uses."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("recipe_options", listing, replace=True)
