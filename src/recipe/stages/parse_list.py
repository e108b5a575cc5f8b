"""Model output to a list of strings, directly or NeMo Curator's way.

``mode: direct`` reads bullet, numbered and YAML lists with :func:`parsers.parse_list`.
``mode: yaml`` asks the model to convert its own answer into a YAML list of strings, then
rejects the conversion if any item is not a substring of the original answer (NeMo
Curator's hallucination check). ``n`` trims over-long lists to the requested count.
"""

from __future__ import annotations

from dataclasses import dataclass

from recipe.errors import ConfigError, ParseError
from recipe.stages import parsers
from recipe.stages.base import LLMStage
from recipe.stages.templates import render

YAML_CONVERSION_PROMPT = (
    "The following text contains a list of items. Convert it into a YAML list of strings. "
    "Copy every item exactly as it appears in the text, without the numbering or bullets, "
    "and do not add items. Answer with the YAML list only.\n\nText:\n{{ text }}"
)


@dataclass
class ParseListStage(LLMStage):
    input_field: str = "response"
    output_field: str | None = None  # default: replace input_field
    mode: str = "direct"  # direct | yaml
    n: int | None = None  # keep at most n items
    min_items: int = 1
    conversion_prompt: str = YAML_CONVERSION_PROMPT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("direct", "yaml"):
            raise ConfigError(f"stage {self.name!r}: mode must be 'direct' or 'yaml', not {self.mode!r}")

    async def aprocess(self, llm, record: dict) -> list[dict]:
        if self.input_field not in record:
            raise ParseError(f"record has no field {self.input_field!r} to parse")
        text = record[self.input_field]
        text = text[0] if isinstance(text, list) and len(text) == 1 else text
        if isinstance(text, list):
            items = [str(t).strip() for t in text if str(t).strip()]
        elif self.mode == "direct":
            items = parsers.parse_list(str(text))
        else:
            converted = await self.ask(llm, [{"role": "user", "content": render(self.conversion_prompt, {"text": text})}], n=1)
            items = parsers.check_substrings(parsers.parse_yaml_list(converted[0]), str(text))
        items = parsers.trim(items, self.n)
        if len(items) < self.min_items:
            raise ParseError(f"expected at least {self.min_items} items, found {len(items)}")
        record = dict(record)
        record[self.output_field or self.input_field] = items
        return [record]
