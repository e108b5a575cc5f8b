"""``SampleStage``: columns drawn from declared distributions, as a recipe's source or added to records.

With ``n``, the stage is the recipe's source: ``n`` records, planned as partitions of
``partition_size`` index ranges (like an input file's line ranges, kept in ``run.json`` so a
resumed run reads the same partitions). Without ``n``, it adds its columns to every incoming
record. Either way a record's values depend only on the seed, the column and the record's key
(its index; or its ``_id`` for incoming records), see :mod:`recipe.stages.samplers.keyed`.

It subclasses :class:`ReadStage` only so that the run plans, resumes and targets it as it does an
input file; it takes none of ReadStage's file parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from recipe.errors import ConfigError
from recipe.stages.base import Stage, _apply_stage, failure_record
from recipe.stages.io.read import ReadStage
from recipe.stages.records import ID, PARENT, SOURCE, record_id

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db


@dataclass
class SampleStage(ReadStage):
    """Records (or extra columns) drawn from declared samplers.

    Args:
        columns: ``{name: {sampler: KIND, ...params, convert_to, round, conditional, drop}}`` or
            ``{name: {expression: "...", ...}}``, in order; a column uses only earlier ones.
        constraints: expressions every output record satisfies (a record breaking one is redrawn).
        n: records to make as the recipe's source; null adds the columns to incoming records.
        seed: the sampling seed (recipes pass ``${sampling.seed}``); null is 0.

    Input columns: the incoming fields the expressions use (none with ``n``). Output columns: the
    columns not dropped.
    """

    columns: dict = field(default_factory=dict)
    constraints: list = field(default_factory=list)
    n: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None

    def rules(self):
        if self.path or self.seeds:
            yield "path", "a sample stage reads no file and no seeds: use a ReadStage before it"
        yield from self.table.problems

    @property
    def table(self):
        from recipe.stages.samplers.table import Table

        cached = self.__dict__.get("_table")
        key = repr((self.columns, self.constraints, self.n is not None))
        if cached is None or cached[0] != key:
            cached = (key, Table(self.columns, self.constraints, known_inputs=self.n is not None))
            self.__dict__["_table"] = cached
        return cached[1]

    @property
    def inputs(self) -> set[str]:
        return set() if self.n is not None else set(self.table.reads)

    @property
    def outputs(self) -> set[str]:
        return self.table.outputs

    def provides(self, available: set[str] | None) -> set[str] | None:
        if self.n is not None:
            return self.outputs
        return Stage.provides(self, available)

    def input_fields(self) -> set[str] | None:
        return self.outputs if self.n is not None else None

    # --- as a source ------------------------------------------------------------------------------

    def plan(self) -> list[list]:
        if self.n is None:
            raise ConfigError(f"recipe.stages.{self.name}: a sample stage first in a recipe needs n "
                              "(how many records to make); without n it adds columns to the records before it")
        return [["sample", [start, min(self.n, start + self.partition_size)]]
                for start in range(0, self.n, self.partition_size)]

    def read(self, plan: list[list]) -> db.Bag:
        import dask.bag as db

        if not plan:
            return db.from_sequence([], npartitions=1)
        return db.from_sequence([tuple(where) for _, where in plan],
                                npartitions=len(plan)).map_partitions(_sample_ranges, self, token=self.name)

    def __call__(self, bag: db.Bag | None = None) -> db.Bag:
        if self.n is not None:
            if bag is not None:  # the records before it would be thrown away
                raise ConfigError(f"recipe.stages.{self.name}: a sample stage with n is a recipe's source: "
                                  "put it first, or leave out n to add its columns to the records before it")
            return self.read(self.plan())
        if bag is None:
            return self.read(self.plan())  # plan() raises: no n, and nothing to add columns to
        return bag.map_partitions(_apply_stage, self, token=self.name)

    def sample_range(self, start: int, end: int) -> list[dict]:
        """Records ``start`` to ``end`` (excluded) of the source."""
        import numpy as np

        from recipe.stages.samplers.table import draw

        keys = np.arange(start, end, dtype=np.uint64)
        outcome = draw(self.table, self.seed or 0, keys, None, f"recipe.stages.{self.name}")
        out = []
        for offset, (row, ident) in enumerate(zip(outcome.rows, record_ids(self.name, keys))):
            index = start + offset
            if row is None:
                out.append(failure_record(self.name, outcome.errors[offset],
                                          {ID: ident, PARENT: None, SOURCE: f"{self.name}:{index}"}))
            else:
                row[ID], row[PARENT], row[SOURCE] = ident, None, f"{self.name}:{index}"
                out.append(row)
        return out

    # --- adding columns to incoming records -------------------------------------------------------

    def process_partition(self, records: list[dict]) -> list[dict]:
        import numpy as np

        from recipe.stages.samplers.keyed import record_key
        from recipe.stages.samplers.table import draw

        keys = np.fromiter((record_key(record_id(r)) for r in records), dtype=np.uint64, count=len(records))
        outcome = draw(self.table, self.seed or 0, keys, records, f"recipe.stages.{self.name}")
        return [row if row is not None else failure_record(self.name, outcome.errors[i], records[i])
                for i, row in enumerate(outcome.rows)]


def record_ids(stage: str, keys) -> list[str]:
    """The ``_id`` of each sampled record: 16 hex digits, a keyed hash of the stage's name and the
    record's index (vectorised: hashing each id on its own was a third of the sampling time)."""
    from recipe.stages.samplers.keyed import bits, stream

    return [f"{v:016x}" for v in bits(keys, stream(0, stage, -1, -1)).tolist()]


def _sample_ranges(ranges: Any, stage: SampleStage) -> list[dict]:
    from recipe.clients.event_loop import check_cancelled

    check_cancelled()
    return [record for start, end in ranges for record in stage.sample_range(start, end)]
