"""Shaping output records: ``WriteStage``'s ``shape`` (Jinja templates that build each record) and
``fields`` (keep, drop, rename).

A template that is one expression, ``"{{ answer }}"``, keeps the value's type: a list stays a list,
a number a number, null stays null; any other template renders text. ``_id``, ``_parent`` and
``_provenance`` (``provenance: true``) are kept unless ``fields.drop`` names them. Error records
are not shaped (``errors/`` keeps what failed as it was); a record the shape cannot be built for
becomes an error record.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from recipe.errors import ConfigError
from recipe.stages.records import ID, PARENT, PROVENANCE, is_error

#: Kept through ``shape`` and ``fields.keep`` unless ``fields.drop`` names them: where a record came from.
LINEAGE = (ID, PARENT, PROVENANCE)

FIELD_KEYS = ("keep", "drop", "rename")
_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%).)*)\}\}\s*$", re.S)


def _one_expression(source: str) -> str | None:
    match = _ONE_EXPRESSION.match(source)
    return match.group("expr").strip() if match else None


def _walk(shape: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, template) for every template in ``shape``."""
    if isinstance(shape, str):
        yield where, shape
    elif isinstance(shape, dict):
        for key, value in shape.items():
            yield from _walk(value, f"{where}.{key}")
    elif isinstance(shape, (list, tuple)):
        for index, value in enumerate(shape):
            yield from _walk(value, f"{where}[{index}]")


def problems(shape: Any, fields: Any) -> Iterator[tuple[str, str]]:
    """``(parameter, problem)`` for each template that does not compile and each bad ``fields`` key."""
    from recipe.stages.templates import compile_expression, compile_template

    if shape is not None and not isinstance(shape, dict):
        yield "shape", f"shape must map each output field to a template, not {shape!r:.60}"
    elif shape:
        for where, source in _walk(shape, "shape"):
            try:
                expr = _one_expression(source)
                compile_expression(expr) if expr is not None else compile_template(source)
            except ConfigError as exc:
                yield where, f"{where}: {exc}"
    if fields is None:
        return
    if not isinstance(fields, dict) or set(fields) - set(FIELD_KEYS):
        yield "fields", f"fields takes keep (a list), drop (a list) and rename (a mapping), not {fields!r:.80}"
        return
    for key in ("keep", "drop"):
        if fields.get(key) is not None and not (isinstance(fields[key], list) and all(isinstance(f, str) for f in fields[key])):
            yield "fields", f"fields.{key} must be a list of field names, not {fields[key]!r:.60}"
    if fields.get("rename") is not None and not isinstance(fields["rename"], dict):
        yield "fields", f"fields.rename must map old names to new ones, not {fields['rename']!r:.60}"


def fields_read(shape: Any) -> set[str]:
    """The record fields the shape's templates need."""
    from recipe.stages.templates import expression_fields, fields_required

    out: set[str] = set()
    for _, source in _walk(shape or {}, "shape"):
        expr = _one_expression(source)
        out |= set(expression_fields(expr) if expr is not None else fields_required(source))
    return out


def _build(shape: Any, record: dict) -> Any:
    import jinja2

    from recipe.stages.templates import compile_expression, compile_template, record_errors

    if isinstance(shape, dict):
        return {key: _build(value, record) for key, value in shape.items()}
    if isinstance(shape, (list, tuple)):
        return [_build(value, record) for value in shape]
    if not isinstance(shape, str):
        return shape
    expr = _one_expression(shape)
    with record_errors(f"shape template {shape!r}"):
        if expr is not None:
            value = compile_expression(expr)(record)
            if isinstance(value, jinja2.Undefined):
                raise jinja2.UndefinedError(f"{expr!r} is undefined")
            return value
        return compile_template(shape).render(record)


def reshape(record: dict, shape: dict | None, fields: dict | None) -> dict:
    """One output record: built by ``shape``, then ``fields`` applied."""
    out = record
    if shape:
        out = _build(shape, record)
        for key in LINEAGE:
            if key in record:
                out.setdefault(key, record[key])
    if fields:
        keep, drop, rename = fields.get("keep"), set(fields.get("drop") or ()), fields.get("rename") or {}
        if keep is not None:
            out = {k: v for k, v in out.items() if k in keep or k in LINEAGE}
        out = {rename.get(k, k): v for k, v in out.items() if k not in drop}
    return out


def shape_partition(partition: Any, stage_name: str, shape: dict | None, fields: dict | None) -> Any:
    """The partition's good records shaped (a failing one becomes its error record); the rest as is."""
    from recipe.stages.base import failure_record
    from recipe.stages.partition import carry

    out = []
    for record in partition:
        if is_error(record):
            out.append(record)
            continue
        try:
            out.append(reshape(record, shape, fields))
        except Exception as exc:  # noqa: BLE001 - the error policy decides
            out.append(failure_record(stage_name, exc, record))
    return carry(partition, out)
