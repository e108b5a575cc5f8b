"""Several fields (and fixed extra items) of a record as one list (macro topic + subtopics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

from recipe.errors import InputError
from recipe.stages.base import Stage
from recipe.stages.records import require_fields


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class CombineStage(Stage):
    """``record[output_field]`` = the listed fields' values, then ``extra``, as one list.

    Input columns: the included ``fields``. Output columns: ``output_field``.

    ``fields`` is a list of names, or a mapping ``name: include`` so that a recipe flag can
    switch one off (open_qa's ``combine_topics``: ``{macro_topic: ${recipe.combine_topics},
    subtopics: true}``). A scalar field counts as a one-item list. ``unique`` drops repeats
    (case-insensitively), keeping the first.
    """

    fields: list[str] | dict[str, bool] = field(default_factory=list)
    output_field: str = "items"
    extra: list = field(default_factory=list)
    unique: bool = True
    min_items: Annotated[int, Field(ge=0)] = 1

    def _names(self) -> list[str]:
        if isinstance(self.fields, dict):
            return [name for name, include in self.fields.items() if include]
        return list(self.fields or [])

    @property
    def inputs(self) -> set[str]:
        return set(self._names())

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    def process(self, record: dict) -> list[dict]:
        items: list = []
        require_fields(record, self._names(), "combine")
        for name in self._names():
            items += _as_list(record[name])
        items += list(self.extra or [])
        if self.unique:
            seen, kept = set(), []
            for item in items:
                key = str(item).strip().lower()
                if key not in seen:
                    seen.add(key)
                    kept.append(item)
            items = kept
        if len(items) < self.min_items:
            raise InputError(f"combined list has {len(items)} items, fewer than {self.min_items}")
        return [{**record, self.output_field: items}]
