"""``ExtractCodeStage``: the code in a model's answer, taken out of its markdown fence (Data
Designer's llm-code columns keep the code only, in the column's language)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from recipe.stages.base import Stage

_FENCE = re.compile(r"```[ \t]*([\w+#.:-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
#: a code_lang's other names a fence may carry (sql dialects are fenced as ``sql``)
_ALIASES = {"python": {"python", "py", "python3"}, "javascript": {"javascript", "js"},
            "typescript": {"typescript", "ts"}, "sql": {"sql"}}


def extract_code(text: str, code_lang: str) -> str:
    """The first fenced block in ``code_lang`` (else the first fenced block, else the text), stripped."""
    lang = code_lang.split(":")[0].lower()
    names = _ALIASES.get(lang, {lang})
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    for tag, body in blocks:
        if tag in names:
            return body.strip()
    return (blocks[0][1] if blocks else text).strip()


@dataclass
class ExtractCodeStage(Stage):
    """``record[field]`` = the code in it (a null, a skipped column, stays null).

    Input columns: ``field``. Output columns: ``field``.
    """

    field: str = "code"
    code_lang: str = "python"

    @property
    def inputs(self) -> set[str]:
        return {self.field}

    @property
    def outputs(self) -> set[str]:
        return {self.field}

    def process(self, record: dict) -> list[dict]:
        value = record.get(self.field)
        if isinstance(value, str):
            record = {**record, self.field: extract_code(value, self.code_lang)}
        return [record]
