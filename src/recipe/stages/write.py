"""Writing results: one part file per partition, committed by an atomic rename.

Good records go to ``<path>/part-NNNNN.<format>``, error records to
``<path>/errors/part-NNNNN.jsonl``. A part file exists whole or not at all, so a crash never
leaves a half-written part that a resumed run would count twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import dask.bag as db
from dask import delayed

from recipe.errors import ConfigError
from recipe.stages import progress
from recipe.stages.base import Stage
from recipe.stages.records import is_error


def _atomic_write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str))
            handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist(records), tmp)
    os.replace(tmp, path)


def _write_partition(records, index: int, directory: str, fmt: str) -> list[dict]:
    records = list(records)
    good = [r for r in records if not is_error(r)]
    bad = [r for r in records if is_error(r)]
    out = Path(directory)
    part = out / f"part-{index:05d}.{fmt}"
    if good and fmt == "hf":  # a Hugging Face dataset directory: data/ shards, card at the end of the run
        from recipe.stages.hf_dataset import write_shard

        write_shard(out, index, good)
    elif good:
        (_atomic_write_parquet if fmt == "parquet" else _atomic_write_jsonl)(part, good)
    if bad:
        (out / "errors").mkdir(parents=True, exist_ok=True)
        _atomic_write_jsonl(out / "errors" / f"part-{index:05d}.jsonl", bad)
    failures: dict[str, int] = {}
    for record in bad:
        key = record["_error"]["class"]
        failures[key] = failures.get(key, 0) + 1
    progress.add(len(good), len(bad))
    return [{"part": index, "records": len(good), "errors": len(bad), "failures": failures}]


@dataclass
class WriteStage(Stage):
    """The last stage: returns a bag with one summary per partition (records, errors).

    ``format: hf`` writes a Hugging Face dataset (see :mod:`recipe.stages.hf_dataset`).
    """

    path: str | None = None  # the runner fills in output_dir
    format: str = "jsonl"

    def __call__(self, bag: db.Bag) -> db.Bag:
        if self.format not in ("jsonl", "parquet", "hf"):
            raise ConfigError(f"stage {self.name!r}: format must be jsonl, parquet or hf, not {self.format!r}")
        if not self.path:
            raise ConfigError(f"stage {self.name!r}: no output path (set output_dir)")
        Path(self.path).mkdir(parents=True, exist_ok=True)
        parts = bag.to_delayed()
        write = delayed(_write_partition, pure=True)
        summaries = [write(part, index, self.path, self.format, dask_key_name=f"{self.name}-{index}-{bag.name}")
                     for index, part in enumerate(parts)]
        return db.from_delayed(summaries)
