"""Stage parameters as types: the dataclass fields of a stage are its parameters, checked in one place.

Each field's annotation is its type (``Literal`` for a choice, ``Annotated[int, Field(ge=0)]`` for
a bound), checked by pydantic; rules that tie parameters together are a stage's
:meth:`~recipe.stages.base.Stage.rules`. :func:`check` runs both and raises one
:class:`StageParamsError` listing every problem, each naming its parameter, so one bad recipe
is refused in one report before any request.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import fields
from functools import lru_cache
from typing import Any

from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError

from recipe.errors import StageParamsError

#: Fields the runner injects, never a user's typo: not type-checked.
_INJECTED = ("client", "name")


@lru_cache(maxsize=None)
def _adapters(cls: type) -> tuple[tuple[str, TypeAdapter], ...]:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError):  # a user's stage annotated with names its module cannot resolve
        hints = {}
    out = []
    for f in fields(cls):
        kind = hints.get(f.name, Any)
        if f.name in _INJECTED or kind is Any or not f.init:
            continue
        try:
            out.append((f.name, TypeAdapter(kind)))
        except PydanticSchemaGenerationError:  # a type pydantic cannot check: the stage checks it itself
            continue
    return tuple(out)


def _say(name: str, value: Any, error: Mapping[str, Any]) -> str:
    """pydantic's error as a short sentence about the parameter."""
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    shown = f"{value!r:.60}"
    if kind == "literal_error":
        return f"{name} must be {ctx.get('expected', '').replace(chr(39), '')}, not {shown}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{name} must be {bounds[kind]} {limit}, not {shown}"
    item = "".join(f"[{p}]" for p in error.get("loc", ()) if isinstance(p, int))  # a list's bad item
    return f"{name}{item}: {error.get('msg', 'invalid')} (got {shown})"


def check(stage: Any) -> None:
    """Type-check every parameter of ``stage`` (keeping pydantic's coercion: ``"3"`` -> 3), then
    its :meth:`rules`; raise one :class:`StageParamsError` with every problem found."""
    problems: list[tuple[str, str]] = []
    cls: type = type(stage)
    for name, adapter in _adapters(cls):
        value = getattr(stage, name)
        try:
            setattr(stage, name, adapter.validate_python(value))
        except ValidationError as exc:  # one problem per parameter (a union fails once per member)
            problems.append((name, _say(name, value, exc.errors()[0])))
    try:
        problems += [(name, message) for name, message in stage.rules()]
    except Exception:  # noqa: BLE001 - a rule tripping over a value already reported as mistyped
        if not problems:
            raise
    if problems:
        raise StageParamsError(stage.name, problems)
