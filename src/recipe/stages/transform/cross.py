"""One child per configured value: every record times a list (topics x material types, styles)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

from recipe.stages.base import Stage
from recipe.stages.records import child


@dataclass
class CrossStage(Stage):
    """One child per value: ``record x values`` with ``record[field] = value``.

    Input columns: none. Output columns: ``field``, or the keys of dict values.

    A dict value is merged into the child instead (several fields per value).
    """

    field: str = "value"
    values: list = dc_field(default_factory=list)

    def rules(self):
        if not self.values:
            yield "values", "values is empty, so every record would vanish"

    @property
    def outputs(self) -> set[str]:
        """The fields every child gets: those all values give."""
        kinds = [set(v) if isinstance(v, dict) else {self.field} for v in self.values]
        return set.intersection(*kinds) if kinds else set()

    def process(self, record: dict) -> list[dict]:
        out = []
        for index, value in enumerate(self.values):
            extra = dict(value) if isinstance(value, dict) else {self.field: value}
            out.append(child(record, index, **extra))
        return out
