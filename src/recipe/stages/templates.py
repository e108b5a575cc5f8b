"""Jinja prompt templates, compiled once per process and rendered strictly.

A field the template needs but the record lacks is an :class:`InputError` naming the field,
not an empty string sent to a paid endpoint.
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
    try:
        return compile_template(source).render(**fields)
    except jinja2.UndefinedError as exc:
        raise InputError(f"record is missing a field the prompt needs: {exc.message}") from None
