"""Asking for tool calls valid under the declared tools: the one retry loop of function calling.

``tools`` are OpenAI's tool JSON Schemas (``{"type": "function", "function": {"name",
"description", "parameters"}}``; a bare ``{"name", "parameters"}`` is wrapped), inline or in a
JSON file. Each call an answer makes is checked: its name is a declared tool, its arguments parse
as JSON and satisfy the tool's ``parameters`` (jsonschema). An answer with no call at all is not
valid either (a function-calling row needs one). An invalid answer is asked again with the error,
as :mod:`recipe.stages.structured` asks again for a schema (the calls shown back as text, so the
follow-up needs no tool results); after the last try the record becomes a
:class:`~recipe.errors.ToolCallError` record carrying the raw calls.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from recipe.errors import ConfigError, ToolCallError

_RAW_IN_FOLLOW_UP = 1000  # characters of the invalid calls shown back to the model


def load_tools(value: Any, where: str = "tools") -> list[dict] | None:
    """The stage's ``tools``: a list of tool schemas, or the path of a JSON file holding one."""
    if value is None:
        return None
    if isinstance(value, str):
        from recipe.storage import read_text

        try:
            text = read_text(value)
            if text is None:
                raise OSError("no such file")
            value = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read {value!r} as a JSON list of tools: {exc}") from None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of OpenAI tool schemas (or a JSON file of one)")
    tools = []
    for index, tool in enumerate(value):
        tool = dict(tool) if isinstance(tool, dict) else tool
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ConfigError(f"{where}[{index}]: a tool is {{type: function, function: {{name, parameters}}}}")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(parameters).check_schema(parameters)
        except exceptions.SchemaError as exc:
            raise ConfigError(f"{where}[{index}] ({function['name']}): parameters is not a JSON Schema: "
                              f"{exc.message}") from None
        tools.append({"type": "function", "function": {**function, "parameters": parameters}})
    return tools


def checked_calls(calls: list[dict] | None, tools: list[dict]) -> list[dict]:
    """``[{name, arguments}]`` with arguments parsed, or :class:`ToolCallError` naming the first problem."""
    if not calls:
        raise ToolCallError("the answer calls no tool")
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    from jsonschema import Draft202012Validator, validators

    out = []
    for index, call in enumerate(calls):
        name = call.get("name")
        if name not in declared:
            raise ToolCallError(f"call {index} names {name!r}, not a declared tool ({', '.join(sorted(declared))})")
        raw = call.get("arguments")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else (raw if raw is not None else {})
        except ValueError as exc:
            raise ToolCallError(f"call {index} ({name}): the arguments are not JSON: {exc}") from None
        validator = validators.validator_for(declared[name], default=Draft202012Validator)(declared[name])
        error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
        if error is not None:
            at = "/".join(str(p) for p in error.path) or "(the arguments)"
            raise ToolCallError(f"call {index} ({name}): {at}: {error.message}")
        out.append({"name": name, "arguments": arguments})
    return out


def openai_messages(turns: list[dict], calls: list[dict]) -> list[dict]:
    """The conversation as OpenAI's chat format holds it for SFT: the turns sent, then the
    assistant's ``tool_calls`` (``content: null``; arguments as JSON text, ids ``call_<i>``)."""
    return [*turns, {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
        for i, c in enumerate(calls)]}]


def _follow_up(messages: list[dict], raw: str, error: ToolCallError) -> list[dict]:
    return [*messages, {"role": "assistant", "content": f"Tool calls: {raw[:_RAW_IN_FOLLOW_UP]}"},
            {"role": "user", "content": f"Those tool calls are not valid ({error}). Call the tools again, with "
                                        "arguments that follow their parameters exactly."}]


async def ask_tool_calls(stage: Any, llm: Any, messages: list[dict], tools: list[dict], tool_choice: Any = None,
                         n: int = 1, retries: int = 2) -> list[tuple[list[dict], str | None]]:
    """``n`` answers' valid calls, each with its reasoning; ToolCallError after ``retries`` further tries."""
    extra = {"tools": tools, **({"tool_choice": tool_choice} if tool_choice is not None else {})}
    answers = await stage.ask_answers(llm, messages, n=n, **extra)
    results: list[Any] = [None] * n
    invalid: dict[int, tuple[list[dict], str, ToolCallError]] = {}

    def take(i: int, turns: list[dict], answer: Any) -> None:
        try:
            results[i] = (checked_calls(answer.tool_calls, tools), answer.reasoning)
            invalid.pop(i, None)
        except ToolCallError as exc:
            invalid[i] = (turns, json.dumps(answer.tool_calls or [], ensure_ascii=False), exc)

    for i, answer in enumerate(answers[:n]):
        take(i, messages, answer)
    for _ in range(retries):
        if not invalid:
            break
        llm.stats.count("tool_call_retries", len(invalid))
        again = {i: _follow_up(turns, raw, exc) for i, (turns, raw, exc) in invalid.items()}
        replies = await asyncio.gather(*(stage.ask_answers(llm, turns, n=1, **extra) for turns in again.values()))
        for (i, turns), reply in zip(again.items(), replies):
            take(i, turns, reply[0])
    if invalid:
        llm.stats.count("tool_call_failures")
        _, raw, exc = next(iter(invalid.values()))
        raise ToolCallError(f"{len(invalid)} of {n} answer(s) with no valid tool call after {retries + 1} tries: "
                            f"{exc}", raw)
    return results
