"""``when:`` on LLM stages: the request is sent only for the records where the expression holds.

The others pass through with the stage's output fields null, or are dropped with
``when_false: drop``; either way no request is made (they cost nothing), and each is counted in
``stats.json`` under ``skipped`` for the stage. The expression is Jinja, in the templates' sandbox,
over the record's fields; one that fails on a record makes that record an error record.
"""

from __future__ import annotations

from recipe.errors import ConfigError


def valid(source: str | None) -> str | None:
    """``source`` if it parses (pydantic's validator for the ``when`` parameter)."""
    if source is None:
        return None
    from recipe.stages.templates import compile_expression

    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"when must be a Jinja expression such as \"rating <= 2\", not {source!r}")
    try:
        compile_expression(source)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return source


def fields(source: str | None) -> set[str]:
    """The record fields ``source`` needs (those it only tests with ``is defined`` left out)."""
    if not source:
        return set()
    from recipe.stages.templates import fields_required

    return set(fields_required("{{ (" + source + ") }}"))


def holds(source: str, record: dict) -> bool:
    """Whether ``source`` is true for ``record``; an :class:`InputError` naming it when it fails there."""
    from recipe.stages.templates import evaluate

    return bool(evaluate(source, record, f"when {source!r}"))


def passed_over(record: dict, outputs: set[str]) -> dict:
    """A record the stage skipped: its output fields null."""
    return {**record, **{name: None for name in sorted(outputs)}}
