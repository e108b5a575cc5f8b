"""Records given in the config, added to the bag mid-recipe (open_qa's extra subtopics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass
from dataclasses import field as dc_field


from recipe.stages.base import Stage
from recipe.stages.records import ID, PARENT, root

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db


@dataclass
class AppendSeedsStage(Stage):
    """Add records given in the config to the bag, after the records already in it.

    Input columns: none. Output columns: the appended records' fields (``field`` for strings).

    Strings become ``{field: value}``; dicts are taken as records. Each gets a stable ``_id``
    and ``_parent: null``: like seeds read by :class:`ReadStage`, they are roots.
    """

    field: str = "seed"
    values: list = dc_field(default_factory=list)

    def seed_records(self) -> list[dict]:
        return [root(value, self.field, "append", self.name, index) for index, value in enumerate(self.values or [])]

    @property
    def outputs(self) -> set[str]:
        return {k for r in self.seed_records() for k in r if k not in (ID, PARENT)}

    def provides(self, available: set[str] | None) -> set[str] | None:
        """Later stages see old records and the appended ones: only the fields both have."""
        records = self.seed_records()
        if not records:
            return available
        common = set.intersection(*(set(r) - {ID, PARENT} for r in records))
        return common if available is None else available & common

    def __call__(self, bag: db.Bag | None) -> db.Bag:
        import dask.bag as db

        records = self.seed_records()
        if not records:  # nothing to add; first in a recipe it is the source of no records
            return bag if bag is not None else db.from_sequence([], npartitions=1)
        extra = db.from_sequence(records, npartitions=1)
        return extra if bag is None else db.concat([bag, extra])

    def process(self, record: dict) -> list[dict]:
        return [record]
