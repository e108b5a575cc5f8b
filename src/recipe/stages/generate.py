"""Generation: a Jinja prompt (or chat messages) per record, the answer in an output field."""

from __future__ import annotations

from dataclasses import dataclass

from recipe.errors import InputError
from recipe.stages.base import LLMStage
from recipe.stages.templates import render


def build_messages(record: dict, prompt: str | None, messages: list | None, system: str | None) -> list[dict]:
    """Chat messages for ``record``: ``messages`` templates if given, else one user ``prompt``."""
    turns: list[dict] = []
    if system:
        turns.append({"role": "system", "content": render(system, record)})
    if messages:
        turns += [{"role": m["role"], "content": render(m["content"], record)} for m in messages]
    else:
        turns.append({"role": "user", "content": render(prompt or "{{ prompt }}", record)})
    if not any(turn["content"].strip() for turn in turns if turn["role"] != "system"):
        raise InputError("the prompt rendered to blank text: nothing to send")
    return turns


@dataclass
class GenerateStage(LLMStage):
    """``record[output_field]`` = the model's answer (a list when ``n`` > 1).

    Args:
        prompt: Jinja template over the record's fields.
        messages: alternatively, a list of ``{role, content}`` templates.
        system: an optional system-prompt template.
        n: answers per record (defaults to ``sampling.n``).
    """

    prompt: str | None = "{{ prompt }}"
    messages: list | None = None
    system: str | None = None
    output_field: str = "response"
    n: int | None = None

    async def aprocess(self, llm, record: dict) -> list[dict]:
        turns = build_messages(record, self.prompt, self.messages, self.system)
        extra = {"n": self.n} if self.n else {}
        answers = await self.ask(llm, turns, **extra)
        n = self.n or self.sampling_for().get("n", 1)
        record = dict(record)
        record[self.output_field] = answers if n > 1 else answers[0]
        return [record]
