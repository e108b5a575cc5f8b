"""Jinja prompt templates, compiled once per process and rendered strictly.

A field the template needs but the record lacks is an :class:`InputError` naming the field,
not an empty string sent to a paid endpoint. Any other failure on one record's values (``{{ n + 1 }}``
with a string ``n``) is that record's :class:`InputError` too. The record's fields are passed
as one mapping, never as keyword arguments, so fields named ``self``, ``cls`` or ``__class__``
render like any other.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recipe.errors import ConfigError, InputError

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


@lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"prompt template line {exc.lineno}: {exc.message}: {source[:80]!r}") from None


def render(source: str, fields: dict) -> str:
    template = compile_template(source)
    try:
        return template.render(fields)
    except jinja2.UndefinedError as exc:
        raise InputError(f"record is missing a field the prompt needs: {exc.message}") from None
    except jinja2.exceptions.SecurityError:
        raise  # the template's own fault, not the record's
    except Exception as exc:  # noqa: BLE001 - a record's values the template cannot use
        raise InputError(f"prompt template failed on this record: {type(exc).__name__}: {exc}") from None
