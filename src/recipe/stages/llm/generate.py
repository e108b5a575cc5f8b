"""Generation: a Jinja prompt (or chat messages) per record, the answer in an output field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from recipe.errors import ConfigError, InputError
from recipe.clients.structured_output import load_schema
from recipe.stages.base import LLMStage
from recipe.stages.structured import ask_valid_answers
from recipe.stages.tool_calls import ask_tool_calls, load_tools, openai_messages
from recipe.stages.templates import fields_required, render


def message_templates(prompt: str | None, messages: list | None, system: str | None) -> list[dict]:
    """The ``{role, content}`` templates a record's chat messages are rendered from."""
    turns = [{"role": "system", "content": system}] if system else []
    return turns + (list(messages) if messages else [{"role": "user", "content": prompt or "{{ prompt }}"}])


def build_messages(record: dict, prompt: str | None, messages: list | None, system: str | None) -> list[dict]:
    """Chat messages for ``record``: ``messages`` templates if given, else one user ``prompt``."""
    turns = [{"role": m["role"], "content": render(m["content"], record)}
             for m in message_templates(prompt, messages, system)]
    if not any(turn["content"].strip() for turn in turns if turn["role"] != "system"):
        raise InputError("the prompt rendered to blank text: nothing to send")
    return turns


def _strings(value: Any):
    """Every string inside ``value`` (a tool_choice: a string, or a mapping of them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _rendered(value: Any, record: dict) -> Any:
    """``value`` with each string rendered as a template over ``record``."""
    if isinstance(value, str):
        return render(value, record)
    if isinstance(value, dict):
        return {k: _rendered(v, record) for k, v in value.items()}
    return value


@dataclass
class GenerateStage(LLMStage):
    """``record[output_field]`` = the model's answer (a list when ``n`` > 1).

    Input columns: the fields the templates use. Output columns: ``output_field``.

    Args:
        prompt: Jinja template over the record's fields.
        messages: alternatively, a list of ``{role, content}`` templates.
        system: an optional system-prompt template.
        n: answers per record (defaults to ``sampling.n``).
        schema: a JSON Schema mapping (inline in YAML or on the command line), or a dotted path to
            a pydantic model class. With one, ``output_field`` holds the parsed, validated value
            (a list of values when ``n`` > 1), never the text; see :mod:`recipe.stages.structured`.
        schema_retries: further tries for an answer that does not validate; after the last one
            the record becomes a ``SchemaError`` record carrying the raw text.
        reasoning_field: keep a reasoning model's trace in this field (a list aligned with the
            answers when ``n`` > 1; null where the model gave none). The answer itself never holds
            the reasoning, with or without this.
        tools: OpenAI tool JSON Schemas (a list, or the path of a JSON file holding one); with them
            ``output_field`` holds the answer's calls, ``[{name, arguments}]`` with arguments parsed
            and validated against the tool's parameters (:mod:`recipe.stages.tool_calls`); an
            invalid call is asked again up to ``schema_retries`` times, then the record becomes a
            ``ToolCallError`` record. ``tool_choice``: OpenAI's (auto, required, or a function); its
            strings are Jinja templates over the record (``{type: function, function: {name:
            "{{ tool }}"}}`` forces each record's own tool, which llama-cpp-python's server decodes
            under the tool's parameters even for a model whose chat template knows no tools).
        messages_field: with ``tools``, the conversation in OpenAI's format, ready for SFT: the
            messages sent, then the assistant's ``tool_calls`` (a list of those when ``n`` > 1).
    """

    prompt: str | None = "{{ prompt }}"
    messages: list[dict[str, str]] | None = None
    system: str | None = None
    output_field: str = "response"
    n: Annotated[int, Field(ge=1)] | None = None
    schema: Any = None
    schema_retries: Annotated[int, Field(ge=0)] = 2
    reasoning_field: str | None = None
    tools: Any = None
    tool_choice: Any = None
    messages_field: str | None = None

    def rules(self):
        self._schema = None
        try:
            self._schema = load_schema(self.schema, where="schema")
        except ConfigError as exc:
            yield "schema", str(exc)
        if self.reasoning_field and self.reasoning_field == self.output_field:
            yield "reasoning_field", f"reasoning_field must differ from output_field ({self.output_field!r})"
        self._tools = None
        try:
            self._tools = load_tools(self.tools)
        except ConfigError as exc:
            yield "tools", str(exc)
        if self.tools is not None and self.schema is not None:
            yield "tools", "give tools or schema, not both (an answer is calls or a value)"
        for name in ("tool_choice", "messages_field"):
            if getattr(self, name) is not None and self.tools is None:
                yield name, f"{name} needs tools"
        for index, message in enumerate(self.messages or []):
            if not {"role", "content"} <= set(message):
                yield "messages", f"messages[{index}] needs a role and a content, got {sorted(message)}"

    @property
    def inputs(self) -> set[str]:
        templates = [m.get("content", "") for m in message_templates(self.prompt, self.messages, self.system)]
        return {name for source in templates + list(_strings(self.tool_choice)) for name in fields_required(source)}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field} | {f for f in (self.reasoning_field, self.messages_field) if f}

    async def aprocess(self, llm, record: dict) -> list[dict]:
        turns = build_messages(record, self.prompt, self.messages, self.system)
        n = self.n or self.sampling_for().get("n", 1)
        if self._tools is not None:
            choice = _rendered(self.tool_choice, record)
            pairs = await ask_tool_calls(self, llm, turns, self._tools, choice, n=n, retries=self.schema_retries)
        elif self._schema is not None:
            pairs = await ask_valid_answers(self, llm, turns, self._schema, n=n, retries=self.schema_retries)
        else:
            pairs = [(a.text, a.reasoning) for a in await self.ask_answers(llm, turns, **({"n": self.n} if self.n else {}))]
        record = dict(record)
        answers, traces = [value for value, _ in pairs], [trace for _, trace in pairs]
        record[self.output_field] = answers if n > 1 else answers[0]
        if self.reasoning_field:
            record[self.reasoning_field] = traces if n > 1 else traces[0]
        if self.messages_field:
            conversations = [openai_messages(turns, calls) for calls in answers]
            record[self.messages_field] = conversations if n > 1 else conversations[0]
        return [record]
