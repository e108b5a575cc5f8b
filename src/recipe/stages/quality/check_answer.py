"""Checking a final answer against a reference field: the simple check ``reasoning_distill`` uses.

The final answer is read off the model's text - the rest of the last line that starts an answer
(``Answer: ...``), else the last ``\\boxed{...}``, else what follows the last "the answer is", else
the last non-empty line - and compared with
the reference after light normalisation: surrounding spaces, ``$`` and a trailing period dropped,
thousands separators removed; two numbers are equal when their values are. This is string and
number equality, not mathematical equivalence (``1/2`` is not ``0.5``): issue 24 §3's
``ValidateStage(kind=math)`` with math-verify is the thorough check, where it exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from recipe.stages import progress
from recipe.stages.base import Stage
from recipe.stages.records import require_fields

_ANSWER_LINE = re.compile(r"(?im)^\W*(?:final\s+)?answer\s*[:=]\s*(?P<answer>.+?)\s*$")
_ANSWER_IS = re.compile(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(?P<answer>[^\n]+?)\s*$", re.M)
_BOXED = re.compile(r"\\boxed\{(?P<answer>[^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def final_answer(text: str) -> str:
    """The final answer a solution states (see the module's docstring); "" when it states none."""
    for pattern in (_ANSWER_LINE, _BOXED, _ANSWER_IS):
        found = list(pattern.finditer(text))
        if found:
            return found[-1].group("answer").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalised(value: Any) -> str:
    text = _THOUSANDS.sub("", str(value).strip().strip("$").strip()).rstrip(".").strip()
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    return repr(int(number)) if number.is_integer() else repr(number)


@dataclass
class CheckAnswerStage(Stage):
    """``record[output_field]`` = ``{"correct": bool, "final": str}``: the final answer of
    ``field`` (a text) against ``reference_field``. ``filter: true`` drops the records whose answer
    is not correct (counted as filtered).

    Input columns: ``field``, ``reference_field``. Output columns: ``output_field``.
    """

    field: str = "solution"
    reference_field: str = "reference"
    output_field: str = "check"
    filter: bool = False

    @property
    def inputs(self) -> set[str]:
        return {self.field, self.reference_field}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    def process(self, record: dict) -> list[dict]:
        require_fields(record, (self.field, self.reference_field), "the answer check")
        final = final_answer(str(record[self.field] or ""))
        correct = bool(final) and normalised(final) == normalised(record[self.reference_field])
        if self.filter and not correct:
            progress.add_filtered(1)
            return []
        return [{**record, self.output_field: {"correct": correct, "final": final}}]
