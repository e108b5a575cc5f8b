"""Asking for values valid under a schema: the one retry loop every structured stage shares.

Where the backend constrains decoding (``ClientSpec.constrains_output``), the schema goes on
the wire and the answer is valid by construction, except when it was cut short. Elsewhere the
prompt carries the schema as an instruction. Either way each answer is checked by
``structured_output.parse``; an invalid one is asked again with the validation error as a
follow-up turn (the way NeMo Data Designer corrects a parse): the model sees its own answer and
what was wrong with it, and the new prompt is a new cache key, so a cached invalid answer is not
served again. After ``retries`` further tries, the record fails with :class:`SchemaError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from recipe.errors import SchemaError
from recipe.clients import structured_output
from recipe.clients.structured_output import Schema

_RAW_IN_FOLLOW_UP = 1000  # characters of the invalid answer shown back to the model


def _with_instruction(messages: list[dict], schema: Schema) -> list[dict]:
    turns = [dict(m) for m in messages]
    for turn in reversed(turns):
        if turn.get("role") == "user":
            turn["content"] = f"{turn['content']}\n\n{structured_output.instruction(schema)}"
            return turns
    return turns + [{"role": "user", "content": structured_output.instruction(schema)}]


def _follow_up(messages: list[dict], raw: str, error: SchemaError) -> list[dict]:
    return [*messages, {"role": "assistant", "content": raw[:_RAW_IN_FOLLOW_UP]},
            {"role": "user", "content": f"That answer is not valid ({error}). Answer again with only "
                                        "the JSON value, following the schema exactly."}]


async def ask_valid(stage: Any, llm: Any, messages: list[dict], schema: Schema, n: int = 1,
                    retries: int = 2) -> list[Any]:
    """``n`` values valid under ``schema``, asked through ``stage.ask``; SchemaError otherwise."""
    return [value for value, _ in await ask_valid_answers(stage, llm, messages, schema, n, retries)]


async def ask_valid_answers(stage: Any, llm: Any, messages: list[dict], schema: Schema, n: int = 1,
                            retries: int = 2) -> list[tuple[Any, str | None]]:
    """:func:`ask_valid`, each value with the reasoning of the answer it was parsed from."""
    if not stage.spec.constrains_output:
        messages = _with_instruction(messages, schema)
    answers = await stage.ask_answers(llm, messages, n=n, response_format=schema)
    values: list[Any] = [None] * n
    traces: list[str | None] = [None] * n
    invalid: dict[int, tuple[list[dict], str, SchemaError]] = {}
    for i, answer in enumerate(answers[:n]):
        try:
            values[i], traces[i] = structured_output.parse(answer.text, schema), answer.reasoning
        except SchemaError as exc:
            invalid[i] = (messages, answer.text, exc)
    first_invalid = len(invalid)
    for _ in range(retries):
        if not invalid:
            break
        llm.stats.count("schema_retries", len(invalid))
        again = {i: _follow_up(turns, raw, exc) for i, (turns, raw, exc) in invalid.items()}
        replies = await asyncio.gather(*(stage.ask_answers(llm, turns, n=1, response_format=schema)
                                         for turns in again.values()))
        for (i, turns), reply in zip(again.items(), replies):
            try:
                values[i], traces[i] = structured_output.parse(reply[0].text, schema), reply[0].reasoning
                del invalid[i]
            except SchemaError as exc:
                invalid[i] = (turns, reply[0].text, exc)
    llm.stats.count_schema(schema.name, asked=n, valid_first=n - first_invalid,
                           valid_after_retries=first_invalid - len(invalid), invalid=len(invalid))
    if invalid:
        llm.stats.count("schema_failures")
        _, raw, last = next(iter(invalid.values()))
        raise SchemaError(f"{len(invalid)} of {n} answer(s) not valid under schema {schema.name!r} after "
                          f"{retries + 1} tries: {last}", raw)
    return list(zip(values, traces))
