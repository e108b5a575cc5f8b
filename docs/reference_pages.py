"""The documentation's reference pages, written from the code so that they cannot drift.

- every stage with its typed parameters (the stage dataclasses, checked by ``stages/params.py``)
  and the shipped recipes that use it;
- every shipped recipe's stages with the fields each reads and writes (``python -m recipe describe``);
- every config key with its type, its default and the schema's own comment (``config/schema.py``);
- every error class with its exit code and whether it is retried (``errors.py``, the CLI's codes).

``docs/gen_reference.py`` writes them at build time (mkdocs-gen-files); tests/test_docs.py checks
that each page names everything the code has.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

STAGE_GROUPS = ("io", "llm", "transform", "quality")


# ---- types, defaults and docstrings as text --------------------------------------------------

def type_text(hint: Any) -> str:
    """A parameter's type as a reader writes it: ``int (>= 1)``, ``'mean' | 'min' | 'max'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        base, *meta = args
        bounds = []
        for item in meta:
            for constraint in getattr(item, "metadata", [item]):
                for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    value = getattr(constraint, attr, None)
                    if value is not None:
                        bounds.append(f"{sign} {value}")
        return type_text(base) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    text = repr(value)
    if isinstance(value, str) and (len(value) > 40 or "\n" in value):
        return "(a built-in template)"
    return text.replace("|", "\\|")


def doc_args(cls: type) -> dict[str, str]:
    """A Google-style docstring's ``Args:`` section: parameter -> description (one line)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^(?:Args|Parameters):\n(.*?)(?:\n\S|\Z)", doc, re.S | re.M)
    out: dict[str, str] = {}
    if not match:
        return out
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r"^\s{4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if item:
            current = item.group(1)
            out[current] = item.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def own_summary(cls: type, tree: str) -> str:
    """A class's own docstring's first paragraph, else its line in the module's tree of classes."""
    if cls.__doc__:
        return " ".join(inspect.cleandoc(cls.__doc__).split("\n\n")[0].split())
    match = re.search(rf"\b{cls.__name__}\s+(.+)$", tree, re.M)
    return match.group(1).strip() if match else ""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---- stages ----------------------------------------------------------------------------------

def stage_classes() -> list[type]:
    """Every stage a recipe can name (``recipe.stages``' exports), the base classes left out."""
    import recipe.stages as stages
    from recipe.stages.base import LLMStage, Stage

    return [getattr(stages, n) for n in stages.__all__ if getattr(stages, n) not in (Stage, LLMStage)]


def stage_params(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` per parameter, as ``stages/params.py`` checks them."""
    hints = typing.get_type_hints(cls, include_extras=True)
    described = doc_args(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in ("name", "client"):
            continue
        rows.append((f.name, type_text(hints.get(f.name, Any)), default_text(f), described.get(f.name, "")))
    return rows


def recipe_stage_rows() -> dict[str, tuple[list[dict], list[str]]]:
    """Each shipped recipe's stages (``describe``'s rows) and its chain problems."""
    from recipe.cli.describe import stage_rows
    from recipe.config import paths

    out = {}
    for path in sorted(paths.recipes_dir().glob("*.yaml")):
        _, rows, problems = stage_rows([f"recipe={path.stem}"])
        out[path.stem] = (rows, problems)
    return out


def stages_page(recipes: dict[str, tuple[list[dict], list[str]]]) -> str:
    used: dict[str, list[str]] = {}
    for recipe_name, (rows, _) in recipes.items():
        for row in rows:
            used.setdefault(row["class"], [])
            if recipe_name not in used[row["class"]]:
                used[row["class"]].append(recipe_name)
    lines = ["# Stages (reference)", "",
             "Generated from the stage classes at build time: each parameter is a dataclass field, and its "
             "type is what `stages/params.py` checks before any request (a bad value is an `error:` line "
             "naming `recipe.stages.NAME.PARAM`). A recipe names a stage by `_target_: recipe.stages.CLASS`.",
             "Which fields each stage of a shipped recipe reads and writes is in "
             "[Recipes (reference)](recipes.md).", ""]
    for cls in sorted(stage_classes(), key=lambda c: (_group(c), c.__name__)):
        lines += [f"## {cls.__name__}", "", f"`recipe.stages.{cls.__name__}` (`{cls.__module__}`)", "",
                  summary(cls), ""]
        params = stage_params(cls)
        if params:
            lines += ["| parameter | type | default | what it is |", "|---|---|---|---|"]
            lines += [f"| `{n}` | `{cell(t)}` | `{d}` | {cell(w)} |" for n, t, d, w in params]
            lines.append("")
        names = used.get(cls.__name__)
        lines += [f"Used by: {', '.join(f'`{n}`' for n in names)}." if names else
                  "Used by no shipped recipe: add it to one of yours.", ""]
    return "\n".join(lines)


def _group(cls: type) -> int:
    part = cls.__module__.split(".")[2] if cls.__module__.count(".") >= 2 else ""
    return STAGE_GROUPS.index(part) if part in STAGE_GROUPS else len(STAGE_GROUPS)


def recipes_page(recipes: dict[str, tuple[list[dict], list[str]]]) -> str:
    from recipe.cli.options import first_sentence
    from recipe.config import paths

    lines = ["# Recipes (reference)", "",
             "Generated at build time by the code behind `python -m recipe describe recipe=NAME`: each "
             "shipped recipe's stages in order, with the record fields each reads (every record must have "
             "them) and writes. A run refuses, before its first request, a chain where a stage reads a "
             "field that neither the input nor an earlier stage provides.", ""]
    for name, (rows, problems) in recipes.items():
        text = (paths.recipes_dir() / f"{name}.yaml").read_text()
        lines += [f"## {name}", "", first_sentence(text) + ".", "",
                  f"`python -m recipe recipe={name}`", "",
                  "| stage | class | reads | writes |", "|---|---|---|---|"]
        for row in rows:
            lines.append(f"| `{row['name']}` | [`{row['class']}`](stages.md#{row['class'].lower()}) | "
                         f"{', '.join(f'`{x}`' for x in row['reads']) or '-'} | "
                         f"{', '.join(f'`{x}`' for x in row['writes']) or '-'} |")
        lines += [""] + [f"Problem: {p}" for p in problems] + [""]
    return "\n".join(lines)


# ---- config keys -----------------------------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """The comment written beside each field of a schema dataclass (the schema's own words)."""
    out: dict[str, str] = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return out
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"^\s+(\w+): [^=]+(?:= .*?)?(?:\s+#\s*(.*))?$", line)
        if match and not stripped.startswith(("def ", "class ", '"""')):
            comment = match.group(2) or ""
            out[match.group(1)] = " ".join([*pending, comment]).strip()
        pending = []
    return out


def config_rows() -> list[tuple[str, str, str, str, str]]:
    """``(key, type, schema default, shipped default, comment)`` for every key of the schema."""
    from omegaconf import OmegaConf

    import recipe
    from recipe.config import schema

    shipped = OmegaConf.to_container(recipe.compose([]), resolve=False)
    rows: list[tuple[str, str, str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            hint = hints.get(f.name, Any)
            if dataclasses.is_dataclass(hint):
                walk(hint, key + ".")  # type: ignore[arg-type]
                continue
            default = default_text(f)
            if default == "'???'":
                default = "required"
            value: Any = shipped
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            shown = "(the recipe's stages)" if key == "recipe" else repr(value)
            rows.append((key, type_text(hint), default, shown, comments.get(f.name, "")))

    walk(schema.RecipeConfig, "")
    return rows


def config_page() -> str:
    lines = ["# Configuration keys (reference)", "",
             "Generated from the schema (`recipe/config/schema.py`) at build time. *Schema default* is the "
             "dataclass's; *shipped* is the value `python -m recipe` composes with no options "
             "(`conf/config.yaml` and the default backend, formatter and sampling). Hydra refuses an "
             "unknown key and a value of the wrong type; the ranges are checked before the run starts.", "",
             "| key | type | schema default | shipped | what it is |", "|---|---|---|---|---|"]
    for key, kind, default, shipped, comment in config_rows():
        lines.append(f"| `{key}` | `{cell(kind)}` | `{cell(default)}` | `{cell(shipped)}` | {cell(comment)} |")
    return "\n".join(lines) + "\n"


# ---- errors ----------------------------------------------------------------------------------

def error_classes() -> list[type]:
    from recipe import errors

    found = [obj for obj in vars(errors).values()
             if isinstance(obj, type) and issubclass(obj, (errors.RecipeError, errors.InternalError))
             and obj.__module__ == errors.__name__]
    return sorted(found, key=lambda c: [k.__name__ for k in reversed(c.__mro__[:-2])])


def error_rows() -> list[tuple[str, str, str, str, str]]:
    """``(class, parent, retried, exit code, what it is)`` for every error class."""
    from recipe import errors
    from recipe.cli import main
    from recipe.stages.base import FATAL

    rows = []
    for cls in error_classes():
        if "retryable" in inspect.signature(cls.__init__).parameters:
            retried = "only with `backend.on_truncated=retry`"
        else:
            retried = "yes" if cls.retryable else "no"
        if issubclass(cls, errors.BudgetExhausted):
            code = f"{main.EXIT_BUDGET_REACHED}: the run stops; the same command with a larger budget resumes"
        elif issubclass(cls, errors.Interrupted):
            code = "130 (Ctrl-C) or 143 (SIGTERM): the run stops; the same command resumes"
        elif issubclass(cls, FATAL):
            code = f"{main.EXIT_USER_ERROR}: the run stops with one `error:` line"
        elif issubclass(cls, errors.LLMError) or cls in (errors.ParseError, errors.SchemaError,
                                                         errors.InternalError, errors.MissingFieldError):
            code = (f"{main.EXIT_RECORDS_FAILED}: one error record in `errors/`, the run goes on"
                    + ("; stops it (2) with `ignore_conversion_failure=false`"
                       if issubclass(cls, errors.ParseError) else ""))
        elif cls is errors.RecipeError:
            code = f"{main.EXIT_USER_ERROR} when it stops the run"
        else:
            code = f"{main.EXIT_USER_ERROR}: one `error:` line (a bad record in an input: an error record, {main.EXIT_RECORDS_FAILED})" \
                if issubclass(cls, errors.InputError) else f"{main.EXIT_USER_ERROR}: the run stops with one `error:` line"
        parent = cls.__mro__[1].__name__
        rows.append((cls.__name__, parent, retried, code, own_summary(cls, errors.__doc__ or "")))
    return rows


def errors_page() -> str:
    from recipe.cli import main

    lines = ["# Errors and exit codes (reference)", "",
             "Generated from `recipe/errors.py` and the CLI's exit codes at build time. *Retried* means a "
             "request failing this way is tried again (up to `backend.num_retries`, with backoff) and, "
             "after the last try, a rerun with `retry_failed=true` (the default) does the record again.", "",
             f"The CLI exits with `0` when every record succeeded, `{main.EXIT_RECORDS_FAILED}` when some "
             f"records failed (they are in `errors/`), `{main.EXIT_USER_ERROR}` for a mistake or a stop "
             f"(one `error:` line), `{main.EXIT_BUDGET_REACHED}` when the budget stopped the run, and "
             "`128 + signal` when interrupted.", "",
             "| class | parent | retried | exit code | what it is |", "|---|---|---|---|---|"]
    for name, parent, retried, code, text in error_rows():
        lines.append(f"| `{name}` | `{parent}` | {retried} | {cell(code)} | {cell(text)} |")
    return "\n".join(lines) + "\n"


# ---- samplers --------------------------------------------------------------------------------

def sampler_rows() -> list[tuple[str, str, str]]:
    """``(sampler, required parameters, optional parameters with defaults)`` for every sampler kind."""
    from recipe.stages.samplers.kinds import KINDS, kind

    rows = []
    for name in KINDS:
        found = kind(name)
        if found is None:
            continue
        optional = ", ".join(f"`{k}` (`{v!r}`)" for k, v in found.optional.items()) or "-"
        rows.append((name, ", ".join(f"`{k}`" for k in found.required) or "-", optional))
    return rows


def samplers_page() -> str:
    from recipe.stages.samplers.table import COLUMN_KEYS, CONVERSIONS

    lines = ["# Samplers (reference)", "",
             "Generated from `recipe/stages/samplers/kinds.py` at build time: every sampler a `SampleStage` "
             "column can name (`{sampler: NAME, ...parameters}`), with its parameters. A missing or unknown "
             "parameter is an `error:` line naming the column before the run. See "
             "[Samplers and expressions](../samplers.md) for how columns, conditions and constraints work.", "",
             "| sampler | required | optional (default) |", "|---|---|---|"]
    lines += [f"| `{name}` | {req} | {cell(opt)} |" for name, req, opt in sampler_rows()]
    lines += ["", f"Every column also takes: {', '.join(f'`{k}`' for k in COLUMN_KEYS if k != 'sampler')} "
              f"(`convert_to` is one of {', '.join(f'`{c}`' for c in CONVERSIONS)}).", ""]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """Every generated page, by its path under ``docs/``."""
    recipes = recipe_stage_rows()
    return {"reference/stages.md": stages_page(recipes), "reference/recipes.md": recipes_page(recipes),
            "reference/config.md": config_page(), "reference/errors.md": errors_page(),
            "reference/samplers.md": samplers_page()}
