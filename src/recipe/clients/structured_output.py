"""Structured output: one schema, each backend's wire form for it, and the check of an answer.

A schema is given once, as a JSON Schema mapping or a pydantic model class. Each backend wants
it in its own dialect; :data:`DIALECTS` is the one table of those forms, per route (chat, or the
raw-text formatter route). A route with no entry cannot constrain decoding: callers ask
:func:`supports` and fall back to validation alone (or to NeMo Curator's text parsing).
Whatever the backend, :func:`parse` is the one check an answer passes before it becomes data.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, overload

from recipe.clients import providers
from recipe.errors import ConfigError, SchemaError


@dataclass(frozen=True)
class Schema:
    """A JSON Schema with a name (OpenAI wants one) and, if given as one, its pydantic model."""

    name: str
    schema: dict = field(hash=False)
    model: Any = field(default=None, compare=False, hash=False)

    def key(self) -> dict:
        """What enters the request cache key: the schema itself, not where it came from."""
        return {"name": self.name, "schema": self.schema}


def _is_model(obj: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic comes with litellm
        return False
    return isinstance(obj, type) and issubclass(obj, BaseModel)


@overload
def as_schema(response_format: None) -> None: ...
@overload
def as_schema(response_format: Mapping | type | Schema) -> Schema: ...
@overload
def as_schema(response_format: Any) -> Schema | None: ...


def as_schema(response_format: Any) -> Schema | None:
    """``response_format`` (None, a JSON Schema mapping, a pydantic model class, an OpenAI
    ``{"type": "json_schema", "json_schema": {...}}`` wrapper or a :class:`Schema`) as a Schema."""
    if response_format is None or isinstance(response_format, Schema):
        return response_format
    if _is_model(response_format):
        return Schema(response_format.__name__, response_format.model_json_schema(), response_format)
    if isinstance(response_format, Mapping):
        data = _plain(response_format)
        if data.get("type") == "json_schema" and isinstance(data.get("json_schema"), dict):
            inner = data["json_schema"]
            return Schema(str(inner.get("name") or "response"), dict(inner.get("schema") or {}))
        return Schema(_name(data.get("title")), data)
    raise ValueError(f"response_format must be a JSON Schema dict or a pydantic model class, "
                     f"not {type(response_format).__name__}")


def _name(title: Any) -> str:
    # OpenAI's json_schema name: letters, digits, underscores and dashes, at most 64.
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(title or "response"))[:64] or "response"


def _plain(value: Any) -> Any:
    """Plain dicts and lists (an OmegaConf node or a tuple becomes JSON-like data)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_schema(value: Any, where: str = "schema") -> Schema | None:
    """A stage's ``schema``: an inline mapping, or a dotted path to a pydantic model class
    (``my_pkg.models.Question`` or ``my_pkg.models:Question``). Bad values are ConfigErrors."""
    if value is None or isinstance(value, Schema):
        return value
    if isinstance(value, str):
        module, sep, name = value.partition(":")
        if not sep:
            module, _, name = value.rpartition(".")
        if not module or not name:
            raise ConfigError(f"{where}: {value!r} is not a dotted path to a pydantic model (my_pkg.models.Question)")
        try:
            target = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: {value!r} not found: {exc}") from None
        if not (_is_model(target) or isinstance(target, Mapping)):
            raise ConfigError(f"{where}: {value!r} is neither a pydantic model class nor a JSON Schema dict")
        value = target
    try:
        schema = as_schema(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if schema is not None:
        check_schema(schema, where)
    return schema


def check_schema(schema: Schema, where: str = "schema") -> None:
    """Refuse a mapping that is not a JSON Schema before any request is paid for."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema.schema).check_schema(schema.schema)
    except exceptions.SchemaError as exc:
        raise ConfigError(f"{where}: not a valid JSON Schema: {exc.message}") from None


def verdict_schema() -> dict:
    """A yes/no classification."""
    return {"title": "verdict", "type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["answer"], "additionalProperties": False}


def score_schema(low: float, high: float) -> dict:
    """A score within the rubric's range (an integer when both ends are)."""
    kind = "integer" if float(low).is_integer() and float(high).is_integer() else "number"
    low_v, high_v = (int(low), int(high)) if kind == "integer" else (low, high)
    return {"title": "score", "type": "object",
            "properties": {"score": {"type": kind, "minimum": low_v, "maximum": high_v}},
            "required": ["score"], "additionalProperties": False}


# ---- the wire forms ---------------------------------------------------------------------------

# Keywords OpenAI's strict mode refuses (its documented subset has none of them).
_NOT_STRICT = {"minLength", "maxLength", "uniqueItems", "minProperties", "maxProperties", "patternProperties",
               "if", "then", "else", "not", "dependentRequired", "dependentSchemas", "unevaluatedProperties"}


def _strict_ok(node: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema: every object closed, every property required,
    no keyword outside its subset. Otherwise the schema is sent with ``strict: false``."""
    if isinstance(node, dict):
        if _NOT_STRICT & node.keys():
            return False
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties") or {}
            if node.get("additionalProperties") is not False or set(node.get("required") or []) != set(props):
                return False
        return all(_strict_ok(v) for v in node.values())
    if isinstance(node, list):
        return all(_strict_ok(v) for v in node)
    return True


def _json_schema_form(s: Schema) -> dict:  # OpenAI's form, which vLLM and current NIMs enforce too
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": s.name, "schema": s.schema, "strict": _strict_ok(s.schema)}}}


def _guided_json(s: Schema) -> dict:  # vLLM's completions route
    return {"extra_body": {"guided_json": s.schema}}


def _ollama_format(s: Schema) -> dict:
    return {"format": s.schema}


def _llamacpp_chat(s: Schema) -> dict:  # llama-cpp-python turns the schema into a grammar itself
    return {"response_format": {"type": "json_object", "schema": s.schema}}


@lru_cache(maxsize=64)
def _gbnf(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # lazy: only the raw-text llama.cpp route needs it

    return json_schema_to_gbnf(schema_json)


def _llamacpp_grammar(s: Schema) -> dict:
    return {"extra_body": {"grammar": _gbnf(json.dumps(s.schema, sort_keys=True))}}


@dataclass(frozen=True)
class Dialect:
    """How one kind of server takes a schema: per route, a builder of request params, or None."""

    chat: Callable[[Schema], dict] | None
    text: Callable[[Schema], dict] | None


DIALECTS: dict[str, Dialect] = {
    "openai": Dialect(chat=_json_schema_form, text=None),
    "vllm": Dialect(chat=_json_schema_form, text=_guided_json),
    # NVIDIA's API catalog: NIM 1.x documented nvext.guided_json; current NIMs enforce OpenAI's
    # json_schema response_format (and ignore a top-level guided_json), so the OpenAI form is sent.
    "nim": Dialect(chat=_json_schema_form, text=None),
    "ollama": Dialect(chat=_ollama_format, text=_ollama_format),
    "llamacpp": Dialect(chat=_llamacpp_chat, text=_llamacpp_grammar),
    "none": Dialect(chat=None, text=None),
}


def dialect_for(provider: str, override: str | None = None) -> str:
    """The backend's dialect: ``override`` (``backend.structured_output``) or the provider's."""
    name = override or providers.provider(provider).structured
    if name not in DIALECTS:
        raise ConfigError(f"backend.structured_output={name!r}: one of {', '.join(sorted(DIALECTS))}")
    return name


def supports(dialect: str, text: bool) -> bool:
    """Whether the backend constrains decoding to a schema on this route."""
    d = DIALECTS[dialect]
    return (d.text if text else d.chat) is not None


def wire_params(dialect: str, schema: Schema, text: bool) -> dict:
    """Request params carrying ``schema`` for this backend and route; {} where it has no form."""
    d = DIALECTS[dialect]
    build = d.text if text else d.chat
    return build(schema) if build is not None else {}


# ---- checking answers ----------------------------------------------------------------------

_FENCED = re.compile(r"^```[\w-]*\s*\n(?P<body>.*?)\n?```\s*$", re.S)


@lru_cache(maxsize=64)
def _validator(schema_json: str):
    from jsonschema import validators

    schema = json.loads(schema_json)
    return validators.validator_for(schema)(schema)


def parse(text: str, schema: Schema) -> Any:
    """The answer as a value valid under ``schema``, or :class:`SchemaError` with the raw text.

    A pydantic model validates (and so coerces) through the model and is stored as its JSON
    dump; a plain schema is checked with ``jsonschema``.
    """
    raw = text if isinstance(text, str) else str(text)
    body = raw.strip()
    fenced = _FENCED.match(body)  # models without constrained decoding like code fences
    if fenced:
        body = fenced["body"].strip()
    try:
        # strict=False: llama.cpp's JSON grammar lets raw control characters (a newline) into strings
        value = json.loads(body, strict=False)
    except ValueError as exc:
        raise SchemaError(f"not JSON: {exc}", raw) from None
    if schema.model is not None:
        from pydantic import ValidationError

        try:
            return schema.model.model_validate(value).model_dump(mode="json")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first.get("loc", ()))) or "(root)"
            raise SchemaError(f"{where}: {first.get('msg')}", raw) from None
    from jsonschema import exceptions

    error = exceptions.best_match(_validator(json.dumps(schema.schema, sort_keys=True)).iter_errors(value))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        raise SchemaError(f"{where}: {error.message}", raw)
    return value


def instruction(schema: Schema) -> str:
    """What a model without constrained decoding is told, so that its answer can validate."""
    return ("Answer with a JSON value only, no other text, that follows this JSON Schema:\n"
            + json.dumps(schema.schema))
