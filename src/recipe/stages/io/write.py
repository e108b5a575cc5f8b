"""Writing results: one part file per partition, committed by a manifest written last.

Good records go to ``<path>/part-NNNNN.<format>`` (a local path or an fsspec URL), error records to
``<path>/errors/part-NNNNN.jsonl``, then ``<path>/manifests/part-NNNNN.json`` marks the
partition committed (see :mod:`recipe.storage.run_folder`). Each file is replaced atomically, and a
partition's leftover good or error file from an earlier attempt is removed before its manifest
is written: a rerun never finds a record both in ``part-N`` and in ``errors/part-N``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from recipe.errors import ConfigError, InputError
from recipe.storage.run_folder import (ERRORS, atomic_write, commit_partition, file_entries, is_transient, part_name,
                               uncommit_partition)
from recipe import storage
from recipe.stages import progress
from recipe.stages.base import Stage
from recipe.stages.partition import dropped
from recipe.stages.records import error_record, is_error, surrogate_message, unencodable_field

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db


def _line(record: dict) -> str:
    """One JSONL line. A value no UTF-8 text can hold (a lone UTF-16 surrogate) only reaches here
    in an error record, which keeps it as a JSON ``\\uXXXX`` escape: the line is valid and the
    record reads back as it was when it is retried."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, default=str)
    return text + "\n"


def _write_jsonl(path: str, records: list[dict]) -> None:
    def fill(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(_line(record) for record in records)

    atomic_write(path, fill)


def writable(records: list[dict], stage: str) -> list[dict]:
    """The records, each one holding a value no output format can store turned into an error
    record naming its field: one bad value costs one record, in every format, never the run."""
    out = []
    for record in records:
        if not is_error(record):
            try:  # one C-speed pass; the field is looked for only when there is one
                json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
            except UnicodeEncodeError:
                field = unencodable_field(record) or "(a value written as text)"
                record = error_record(stage, InputError(surrogate_message(field)), record)
        out.append(record)
    return out


def _write_partition(records, index: int, directory: str, fmt: str, config_hash: str | None,
                     source: Any = None, stage: str = "write") -> list[dict]:
    drops, records = dropped(records), writable(list(records), stage)
    if any(is_error(r) and r["_error"]["class"] == "BudgetExhausted" for r in records):
        # The budget stopped this partition part-way: not committed (an earlier commit stays), so a
        # rerun with a larger budget does it, its answered requests coming from the cache.
        return []
    good = [r for r in records if not is_error(r)]
    bad = [r for r in records if is_error(r)]
    name = part_name(index)
    uncommit_partition(directory, index)  # not done again until the new manifest is written
    good_file = error_file = None
    json_fields: list[str] = []
    if fmt == "hf":  # a Hugging Face dataset: shards under data/, the card when the run is over
        from recipe.stages.io.hf_dataset import write_shard

        good_file, json_fields = write_shard(directory, index, good)
    elif good:
        good_file = f"{name}.{fmt}"
        if fmt == "parquet":
            from recipe.stages.io.parquet import write_part

            json_fields = write_part(storage.join(directory, good_file), good)
        else:
            _write_jsonl(storage.join(directory, good_file), good)
    if bad:
        storage.makedirs(storage.join(directory, ERRORS))
        error_file = f"{ERRORS}/{name}.jsonl"
        _write_jsonl(storage.join(directory, ERRORS, f"{name}.jsonl"), bad)
    failures: dict[str, int] = {}
    for record in bad:
        key = record["_error"]["class"]
        failures[key] = failures.get(key, 0) + 1
    manifest = {"part": index, "input": source, "records": len(good), "errors": len(bad), "failures": failures,
                "transient": sum(n for cls, n in failures.items() if is_transient(cls)),
                "config_hash": config_hash, "files": [f for f in (good_file, error_file) if f],
                "sizes": file_entries(directory, good_file, error_file),
                "json_fields": json_fields, "dropped": drops, "committed": time.time()}
    commit_partition(directory, index, good_file, error_file, manifest)
    progress.committed(index, len(good), len(bad))
    return [manifest]


@dataclass
class WriteStage(Stage):
    """The last stage: returns a bag with one manifest per partition (records, errors, ...).

    ``format: hf`` writes a Hugging Face dataset (see :mod:`recipe.stages.io.hf_dataset`). ``shape``
    (templates building each record) and ``fields`` (keep, drop, rename): see :mod:`recipe.stages.io.shape`.

    Input columns: the fields ``shape`` uses (else none: every field is written). Output columns: none.
    """

    path: str | None = None  # the runner fills in output_dir
    format: Literal["jsonl", "parquet", "hf"] = "jsonl"
    fields: dict | None = None
    shape: dict | None = None

    def rules(self):
        from recipe.stages.io.shape import problems

        yield from problems(self.shape, self.fields)

    @property
    def inputs(self) -> set[str]:
        from recipe.stages.io.shape import fields_read

        return fields_read(self.shape)

    def __call__(self, bag: db.Bag) -> db.Bag:
        return self.write(bag)

    def write(self, bag: db.Bag, only: list[int] | None = None, config_hash: str | None = None,
              sources: list | None = None, part_offset: int = 0) -> db.Bag:
        """Write the partitions numbered ``only`` (default: all) of ``bag``; part ``i`` is partition ``i``.

        Dask computes only what the selected partitions depend on, so a committed partition of a
        partition-wise recipe is not computed again. Manifests carry the run's config hash and the
        input range ``sources[i]`` partition ``i`` was read from. ``part_offset`` numbers the parts
        of a later round (``target.records`` on a recipe that makes its own seeds) after the earlier ones.
        """
        import dask.bag as db
        from dask import delayed

        if self.format not in ("jsonl", "parquet", "hf"):
            raise ConfigError(f"stage {self.name!r}: format must be jsonl, parquet or hf, not {self.format!r}")
        if not self.path:
            raise ConfigError(f"stage {self.name!r}: no output path (set output_dir)")
        storage.makedirs(self.path)
        if self.shape or self.fields:
            from recipe.stages.io.shape import shape_partition

            bag = bag.map_partitions(shape_partition, self.name, self.shape, self.fields, token=f"{self.name}-shape")
        if only is not None and not only:  # every partition is committed: not even a graph to optimize
            return db.from_sequence([], npartitions=1)
        parts = bag.to_delayed()
        wanted = range(len(parts)) if only is None else only
        write = delayed(_write_partition, pure=True)
        summaries = [write(parts[i], part_offset + i, self.path, self.format, config_hash,
                           sources[i] if sources is not None and i < len(sources) else None, self.name,
                           dask_key_name=f"{self.name}-{i}-{bag.name}")
                     for i in wanted]
        return db.from_delayed(summaries) if summaries else db.from_sequence([], npartitions=1)
