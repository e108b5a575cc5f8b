"""Keeping records: a Python predicate, or a yes/no classification by the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from recipe.errors import ConfigError
from recipe.clients.structured_output import as_schema, verdict_schema
from recipe.stages import parsers, progress
from recipe.stages.base import LLMStage, Stage
from recipe.stages.functions import load_function
from recipe.stages.structured import ask_valid
from recipe.stages.templates import fields_required, render


@dataclass
class FilterStage(LLMStage):
    """Keep a record when ``predicate(record)`` is true, or when the model answers yes to ``prompt``.

    ``keep_undecided`` decides what happens to answers that are neither yes nor no. The verdict
    is stored in ``verdict_field`` when given, so what was kept can be audited.

    With ``structured`` (the default) and a backend that constrains decoding, the model answers
    ``{"answer": "yes" | "no"}`` and an invalid answer is asked again (``schema_retries``); elsewhere
    (or with ``structured: false``) the text is read as NeMo Curator does.

    Input columns: the prompt's fields (a predicate's are not known). Output columns: ``verdict_field``.
    """

    predicate: Any = None  # "module:function" or a callable
    prompt: str | None = None  # a yes/no question template over the record
    keep_undecided: bool = False
    verdict_field: str | None = None
    structured: bool = True
    schema_retries: Annotated[int, Field(ge=0)] = 2

    def rules(self):
        if (self.predicate is None) == (self.prompt is None):
            yield "prompt", "give exactly one of predicate or prompt"
        elif self.predicate is not None:
            try:
                load_function(self.predicate)  # refused when built, not per record
            except ConfigError as exc:
                yield "predicate", str(exc)

    @property
    def inputs(self) -> set[str]:
        return set(fields_required(self.prompt)) if self.prompt else set()

    @property
    def outputs(self) -> set[str]:
        return {self.verdict_field} if self.verdict_field and self.prompt else set()

    def process_partition(self, records: list[dict]) -> list[dict]:
        if self.predicate is not None:  # no model: the plain per-record loop (and error policy)
            return Stage.process_partition(self, records)
        return super().process_partition(records)

    def process(self, record: dict) -> list[dict]:
        if load_function(self.predicate)(record):
            return [record]
        progress.add_filtered(1)
        return []

    async def aprocess(self, llm, record: dict) -> list[dict]:
        if self.prompt is None:  # rules(): a filter without a prompt has a predicate, and runs process()
            raise TypeError(f"stage {self.name!r} has no prompt to ask the model")
        turns = [{"role": "user", "content": render(self.prompt, record)}]
        if self.structured and self.spec.constrains_output:
            value = (await ask_valid(self, llm, turns, as_schema(verdict_schema()), retries=self.schema_retries))[0]
            answer = value["answer"]
        else:
            answer = (await self.ask(llm, turns, n=1))[0]
        verdict = parsers.parse_yes_no(answer)  # None: neither yes nor no
        if verdict is False or (verdict is None and not self.keep_undecided):
            progress.add_filtered(1)
            return []
        if self.verdict_field:
            record = {**record, self.verdict_field: answer.strip()}
        return [record]
