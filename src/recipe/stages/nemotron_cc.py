"""Nemotron-CC rewrites: each document rewritten by every selected prompt, post-processed.

The five rewrites of Nemotron-CC (Wikipedia-style rephrasing, diverse QA pairs,
distillation, knowledge extraction, knowledge list) are templates in the recipe
(``recipe.templates``); ``rewrites`` selects which run. Each (document, rewrite) becomes one
child record with ``rewrite`` (its name) and the rewritten ``text``; ``diverse_qa`` keeps
1..``max_num_pairs`` QA pairs appended to the document and ``knowledge_list`` becomes clean
lines. A rewrite that fails to parse is an error record of its own (or stops the run when
``ignore_conversion_failure`` is false); the document's other rewrites still come out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from recipe.errors import ConfigError, InputError, ParseError
from recipe.stages.base import LLMStage
from recipe.stages.postprocess import diverse_qa_text, knowledge_list_text
from recipe.stages.records import child
from recipe.stages.templates import render

REWRITES = ("wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list")


@dataclass
class RewritesStage(LLMStage):
    """One child record per (document, selected rewrite).

    Args:
        rewrites: names of the templates to run, in order.
        templates: name -> Jinja template over the document's fields.
        system: an optional system prompt (Jinja) sent with every rewrite.
        input_field: the document's text.
        output_field: where the rewritten text goes (default ``text``).
        original_field: where the original text is kept when ``output_field`` replaces it
            (null: dropped).
        max_num_pairs: at most this many QA pairs for ``diverse_qa``.
    """

    rewrites: list = field(default_factory=lambda: list(REWRITES))
    templates: dict = field(default_factory=dict)
    system: str | None = None
    input_field: str = "text"
    output_field: str = "text"
    original_field: str | None = "source_text"
    rewrite_field: str = "rewrite"
    max_num_pairs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rewrites, str):
            self.rewrites = [self.rewrites]
        if not self.rewrites:
            raise ConfigError(f"stage {self.name!r}: rewrites is empty; choose some of {', '.join(REWRITES)}")
        missing = [r for r in self.rewrites if r not in (self.templates or {})]
        if missing:
            raise ConfigError(f"stage {self.name!r}: no template for rewrite(s) {missing} "
                              f"(templates: {sorted(self.templates or {})})")
        if self.max_num_pairs < 1:
            raise ConfigError(f"stage {self.name!r}: max_num_pairs must be >= 1, not {self.max_num_pairs}")

    def postprocess(self, rewrite: str, document: str, answer: str) -> str:
        if rewrite == "diverse_qa":
            return diverse_qa_text(document, answer, self.max_num_pairs)
        if rewrite == "knowledge_list":
            return knowledge_list_text(answer)
        text = answer.strip()
        if not text:
            raise ParseError("the rewrite is empty")
        return text

    async def _rewrite(self, llm, record: dict, out: dict, rewrite: str) -> dict:
        turns = []
        if self.system:
            turns.append({"role": "system", "content": render(self.system, record)})
        turns.append({"role": "user", "content": render(self.templates[rewrite], record)})
        answer = (await self.ask(llm, turns, n=1))[0]
        try:
            out[self.output_field] = self.postprocess(rewrite, str(record[self.input_field]), answer)
        except ParseError as exc:
            raise ParseError(f"rewrite {rewrite!r}: {exc}") from None
        return out

    async def _one(self, llm, record: dict, index: int, rewrite: str) -> dict:
        """One rewrite, or its own error record (the stages' one error policy, see base.py)."""
        extra = {self.rewrite_field: rewrite}
        if self.original_field and self.output_field == self.input_field:
            extra[self.original_field] = record[self.input_field]
        out = child(record, index, **extra)
        return await self.attempt(self._rewrite(llm, record, out, rewrite), out)

    async def aprocess(self, llm, record: dict) -> list[dict]:
        if self.input_field not in record:
            raise InputError(f"record has no field {self.input_field!r} to rewrite")
        return list(await asyncio.gather(*(self._one(llm, record, i, r) for i, r in enumerate(self.rewrites))))
