"""Nemotron-CC rewrites: each document rewritten by every selected prompt, post-processed.

The five rewrites of Nemotron-CC (Wikipedia-style rephrasing, diverse QA pairs,
distillation, knowledge extraction, knowledge list) are templates in the recipe
(``recipe.templates``); ``rewrites`` selects which run. Each (document, rewrite) becomes one
child record with ``rewrite`` (its name) and the rewritten ``text``; ``diverse_qa`` keeps
1..``max_num_pairs`` QA pairs appended to the document and ``knowledge_list`` becomes clean
lines. A rewrite that fails to parse is an error record of its own (or stops the run when
``ignore_conversion_failure`` is false; the stages' one error policy, ``LLMStage.attempt``);
the document's other rewrites still come out. All of Nemotron-CC is here: the stage and its
post-processing (QA pairs, knowledge lists).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from recipe.errors import ParseError
from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields
from recipe.stages.parsers import LIST_ITEM, preview
from recipe.stages.records import child
from recipe.stages.templates import fields_required, render

REWRITES = ("wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list")


# --- post-processing: the answers of diverse_qa and knowledge_list ----------------------

_QA_LABEL = re.compile(
    r"^(?:(?:[-*•+]|\d{1,4}[.):]|\(\d{1,4}\))\s*)?"  # optional bullet or number
    r"(?:\*\*|__)?\s*(?P<label>question|answer)(?:\s*\d{1,4})?\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?",
    re.I,
)


def _strip_unbalanced_bold(text: str) -> str:
    """``**Question: Why?**`` leaves ``Why?**`` after the label; drop the orphan marker."""
    text = text.strip()
    if text.count("**") % 2 == 1 and text.endswith("**"):
        text = text[:-2].rstrip()
    return text


def parse_qa_pairs(text: str, max_num_pairs: int) -> list[tuple[str, str]]:
    """Read "Question: ...\\nAnswer: ..." pairs, as Nemotron-CC's diverse-QA post-processing.

    Tolerates bullets, numbers (``1. Question:``) and bold labels (``**Question:**``), and
    multi-line questions or answers; a blank line ends a pair so an outro is not glued to
    the last answer. Keeps the first ``max_num_pairs`` complete pairs (Nemotron-CC samples
    between 1 and max_num_pairs at random; taking the first keeps runs reproducible).
    Raises ``ParseError`` when no complete pair is found.
    """
    if max_num_pairs < 1:
        raise ValueError(f"max_num_pairs must be >= 1, got {max_num_pairs}")
    pairs: list[list[str | None]] = []  # [question, answer]; answer None until seen
    open_field: int | None = None  # 0 question, 1 answer, None: continuation lines ignored
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            open_field = None  # a label still attaches; unlabeled lines after this do not
            continue
        m = _QA_LABEL.match(line)
        rest = _strip_unbalanced_bold(line[m.end():]) if m else ""
        if m and m["label"].lower() == "question":
            pairs.append([rest, None])
            open_field = 0
        elif m and pairs and pairs[-1][1] is None:  # an answer to the open question
            pairs[-1][1] = rest
            open_field = 1
        elif m:
            open_field = None  # an answer with no question: ignore it and what follows
        elif open_field is not None:
            current = pairs[-1][open_field]
            pairs[-1][open_field] = f"{current}\n{line}" if current else line
    complete = [(q.strip(), a.strip()) for q, a in pairs if q and q.strip() and a and a.strip()]
    if not complete:
        raise ParseError(f"no Question/Answer pairs found in {preview(text)}")
    return complete[:max_num_pairs]


def format_qa_pairs(document: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Append QA pairs to their document, as Nemotron-CC's diverse-QA training text."""
    blocks = [f"Question: {q}\nAnswer: {a}" for q, a in pairs]
    if not blocks:
        raise ValueError("no QA pairs to append")
    return document + "\n\n" + "\n\n".join(blocks)


def clean_knowledge_list(text: str) -> str:
    """Tidy a knowledge list, as Nemotron-CC's knowledge-list post-processing.

    A first line that is not a list item is the model's preamble ("Here is the list:") and
    is dropped; every remaining line loses its bullet or number and surrounding whitespace,
    empty lines go, and the items are joined one per line. Raises ``ParseError`` when
    nothing is left.
    """
    lines = text.strip().splitlines()
    if lines and not LIST_ITEM.match(lines[0]):
        lines = lines[1:]
    items = []
    for line in lines:
        m = LIST_ITEM.match(line)
        item = (m["body"] or "") if m else line
        item = item.strip()
        if item:
            items.append(item)
    if not items:
        raise ParseError(f"knowledge list is empty after cleaning: {preview(text)}")
    return "\n".join(items)


def diverse_qa_text(document: str, answer: str, max_num_pairs: int) -> str:
    """The document followed by 1..max_num_pairs of the answer's QA pairs."""
    return format_qa_pairs(document, parse_qa_pairs(str(answer), max_num_pairs))


# --- the stage ------------------------------------------------------------------------------


@dataclass
class RewritesStage(LLMStage):
    """One child record per (document, selected rewrite).

    Input columns: ``input_field``, the selected templates' fields.
    Output columns: ``output_field``, ``rewrite_field``, ``original_field``.

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

    rewrites: list[str] = field(default_factory=lambda: list(REWRITES))
    templates: dict[str, str] = field(default_factory=dict)
    system: str | None = None
    input_field: str = "text"
    output_field: str = "text"
    original_field: str | None = "source_text"
    rewrite_field: str = "rewrite"
    max_num_pairs: Annotated[int, Field(ge=1)] = 5

    def __post_init__(self) -> None:
        if isinstance(self.rewrites, str):
            self.rewrites = [self.rewrites]
        super().__post_init__()

    def rules(self):
        if not self.rewrites:
            yield "rewrites", f"rewrites is empty; choose some of {', '.join(REWRITES)}"
        missing = [r for r in self.rewrites if r not in (self.templates or {})]
        if missing:
            yield "rewrites", f"no template for rewrite(s) {missing} (templates: {sorted(self.templates or {})})"

    @property
    def inputs(self) -> set[str]:
        used = {self.input_field}
        for source in [self.system or ""] + [self.templates[r] for r in self.rewrites if r in self.templates]:
            used |= fields_required(source)
        return used

    @property
    def outputs(self) -> set[str]:
        out = {self.output_field, self.rewrite_field}
        if self.original_field and self.output_field == self.input_field:
            out.add(self.original_field)
        return out

    def postprocess(self, rewrite: str, document: str, answer: str) -> str:
        if rewrite == "diverse_qa":
            return diverse_qa_text(document, answer, self.max_num_pairs)
        if rewrite == "knowledge_list":
            return clean_knowledge_list(str(answer))
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
        """One rewrite, or its own error record (``attempt``: the stages' one error policy)."""
        extra = {self.rewrite_field: rewrite}
        if self.original_field and self.output_field == self.input_field:
            extra[self.original_field] = record[self.input_field]
        out = child(record, index, **extra)
        return await self.attempt(self._rewrite(llm, record, out, rewrite), out)

    async def aprocess(self, llm, record: dict) -> list[dict]:
        require_fields(record, (self.input_field,), "rewrite")
        return list(await asyncio.gather(*(self._one(llm, record, i, r) for i, r in enumerate(self.rewrites))))
