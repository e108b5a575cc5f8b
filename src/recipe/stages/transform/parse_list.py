"""Model output to a list of strings: structured output, directly, or NeMo Curator's way.

``mode: structured`` takes a list the generating stage already produced under a list schema
(``{"items": [...]}``, see ``GenerateStage.schema``) as it is. Given text, it asks the model to
convert it into ``{"items": [...]}`` with exactly ``n`` items where the backend constrains
decoding, and reads it directly where it does not.
``mode: direct`` reads bullet, numbered and YAML lists with :func:`parsers.parse_list`.
``mode: yaml`` asks the model to convert its own answer into a YAML list of strings, then
rejects the conversion if any item is not a substring of the original answer (NeMo
Curator's hallucination check). ``n`` trims over-long lists to the requested count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from recipe.errors import ParseError
from recipe.clients.structured_output import as_schema
from recipe.config.list_schema import list_schema
from recipe.stages import parsers
from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields
from recipe.stages.structured import ask_valid
from recipe.stages.templates import render

YAML_CONVERSION_PROMPT = (
    "The following text contains a list of items. Convert it into a YAML list of strings. "
    "Copy every item exactly as it appears in the text, without the numbering or bullets, "
    "and do not add items. Answer with the YAML list only.\n\nText:\n{{ text }}"
)
STRUCTURED_CONVERSION_PROMPT = (
    "The following text contains a list of items. Copy every item exactly as it appears in the text, "
    "without the numbering or bullets, and do not add items.\n\nText:\n{{ text }}"
)


@dataclass
class ParseListStage(LLMStage):
    """``record[output_field or input_field]`` = the list of strings in ``record[input_field]``.

    Input columns: ``input_field``. Output columns: ``output_field`` (default: ``input_field``).
    """

    input_field: str = "response"
    output_field: str | None = None  # default: replace input_field
    mode: Literal["structured", "direct", "yaml"] = "direct"
    n: Annotated[int, Field(ge=1)] | None = None  # keep at most n items (structured: ask for exactly n)
    min_items: Annotated[int, Field(ge=0)] = 1
    conversion_prompt: str | None = None  # default: the YAML or the structured conversion prompt
    schema_retries: Annotated[int, Field(ge=0)] = 2  # structured conversions only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conversion_prompt is None:
            self.conversion_prompt = STRUCTURED_CONVERSION_PROMPT if self.mode == "structured" else YAML_CONVERSION_PROMPT

    @property
    def _conversion_prompt(self) -> str:
        """The prompt a conversion sends (``__post_init__`` filled in the default)."""
        if self.conversion_prompt is None:
            return STRUCTURED_CONVERSION_PROMPT if self.mode == "structured" else YAML_CONVERSION_PROMPT
        return self.conversion_prompt

    @property
    def inputs(self) -> set[str]:
        return {self.input_field}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field or self.input_field}

    async def aprocess(self, llm, record: dict) -> list[dict]:
        require_fields(record, (self.input_field,), "parse")
        text = record[self.input_field]
        if isinstance(text, dict) and isinstance(text.get("items"), list):  # a structured list
            text = parsers.clean_items(text["items"])
        elif isinstance(text, list) and len(text) == 1:
            text = text[0]
        if isinstance(text, list):
            items = [str(t).strip() for t in text if str(t).strip()]
        elif self.mode == "direct" or (self.mode == "structured" and not self.spec.constrains_output):
            items = parsers.parse_list(str(text))
        elif self.mode == "structured":
            prompt = [{"role": "user", "content": render(self._conversion_prompt, {"text": text})}]
            schema = as_schema(list_schema(self.n, self.min_items))
            items = parsers.clean_items((await ask_valid(self, llm, prompt, schema, retries=self.schema_retries))[0]["items"])
        else:
            converted = await self.ask(llm, [{"role": "user", "content": render(self._conversion_prompt, {"text": text})}], n=1)
            items = parsers.check_substrings(parsers.parse_yaml_list(converted[0]), str(text))
        items = parsers.trim(items, self.n)
        if len(items) < self.min_items:
            raise ParseError(f"expected at least {self.min_items} items, found {len(items)}")
        record = dict(record)
        record[self.output_field or self.input_field] = items
        return [record]
