"""One record per list item, keeping the parent's fields and pointing back to it."""

from __future__ import annotations

from dataclasses import dataclass

from recipe.errors import InputError
from recipe.stages.base import Stage
from recipe.stages.records import child


@dataclass
class ExplodeStage(Stage):
    """One child per item of ``record[field]``, holding the item in ``output_field``.

    Input columns: ``field``. Output columns: ``output_field`` (default: ``field``), ``index_field``.
    """

    field: str = "items"
    output_field: str | None = None  # default: same name, now holding one item
    index_field: str | None = None  # optionally record the item's position

    @property
    def inputs(self) -> set[str]:
        return {self.field}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field or self.field} | ({self.index_field} if self.index_field else set())

    def process(self, record: dict) -> list[dict]:
        items = record.get(self.field)
        if not isinstance(items, list):
            raise InputError(f"field {self.field!r} is not a list (got {type(items).__name__})")
        out = []
        for index, item in enumerate(items):
            extra = {self.output_field or self.field: item}
            if self.index_field:
                extra[self.index_field] = index
            out.append(child(record, index, **extra))
        return out
