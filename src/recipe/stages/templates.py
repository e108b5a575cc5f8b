"""Jinja prompt templates, compiled once per process and rendered strictly.

A field the template needs but the record lacks is an :class:`InputError` naming the field,
not an empty string sent to a paid endpoint; so is a field that is null or blank. Any other
failure on one record's values (``{{ n + 1 }}`` with a string ``n``) is that record's
:class:`InputError` too. The record's fields are passed as one mapping, never as keyword
arguments, so fields named ``self``, ``cls`` or ``__class__`` render like any other. Lists and
dicts are inserted as JSON, not as Python's repr. A template that tries to leave the sandbox
stops the run with one line naming it.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from recipe.errors import ConfigError, InputError


def _finalize(value: Any) -> Any:
    """What ``{{ x }}`` prints: structures as JSON (the model reads JSON, not Python's repr)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                                     finalize=_finalize)


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"prompt template line {exc.lineno}: {exc.message}: {source[:80]!r}") from None


@lru_cache(maxsize=512)
def fields_used(source: str) -> frozenset[str]:
    """The variables a template reads (Jinja's own analysis): what a stage declares it reads."""
    compile_template(source)  # a syntax error is a ConfigError naming the line
    return frozenset(meta.find_undeclared_variables(_ENV.parse(source)))


def fields_required(source: str) -> frozenset[str]:
    """The variables a template reads and cannot do without: those it only tests
    (``x is defined``) or gives a default (``x | default(...)``) are left out."""
    return frozenset(name for name in fields_used(source)
                     if not re.search(rf"\b{re.escape(name)}\s*(?:is\s+(?:not\s+)?defined\b|\|\s*(?:default|d)\b)",
                                      source))


def render(source: str, fields: dict, may_be_blank: tuple[str, ...] = ()) -> str:
    """``may_be_blank`` names the fields a stage itself supplies and a template tests (``{{ x if x }}``),
    such as a dialogue's optional user style: those are not the record's missing values."""
    template = compile_template(source)
    for name in sorted(fields_used(source)):  # null and blank are as good as missing
        if name not in fields or name in may_be_blank:
            continue  # missing: StrictUndefined says so below, unless the template checks `is defined`
        value = fields[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"record field {name!r} that the prompt needs is {'null' if value is None else 'blank'}")
    try:
        return template.render(fields)
    except jinja2.UndefinedError as exc:
        raise InputError(f"record is missing a field the prompt needs: {exc.message}") from None
    except SecurityError as exc:
        raise ConfigError(f"prompt template {source[:80]!r} was refused by Jinja's sandbox: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a record's values the template cannot use
        raise InputError(f"prompt template failed on this record: {type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=512)
def compile_expression(source: str):
    """A Jinja expression (``rating <= 2``, ``price * 1.2``) in the templates' sandbox: called with a
    record's mapping, it returns a value, not text. A syntax error is a :class:`ConfigError`."""
    try:
        return _ENV.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"expression {source!r} does not parse: {exc.message}") from None


@contextmanager
def record_errors(what: str) -> Iterator[None]:
    """Jinja's failures on one record, as the one-line errors every user of a template gives: a field
    it lacks or a value it cannot use is this record's :class:`InputError`; the sandbox refusing the
    template is the config's :class:`ConfigError`. ``what`` names the template (``when 'x > 1'``)."""
    try:
        yield
    except jinja2.UndefinedError as exc:
        raise InputError(f"{what}: {exc.message}") from None
    except SecurityError as exc:
        raise ConfigError(f"{what} was refused by Jinja's sandbox: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - this record's values
        raise InputError(f"{what} failed on this record: {type(exc).__name__}: {exc}") from None


def evaluate(source: str, record: dict, what: str) -> Any:
    """The expression ``source`` on ``record``, its failures as :func:`record_errors` gives them."""
    with record_errors(what):
        return compile_expression(source)(record)


def expression_fields(source: str) -> frozenset[str]:
    """The variables an expression reads (the sandbox's own globals, such as ``range``, left out)."""
    compile_expression(source)
    return fields_used("{{ (" + source + ") }}") - frozenset(_ENV.globals)
