"""Reading records: JSONL or Parquet files, or seeds given in the config.

JSONL files are split into partitions of ``partition_size`` lines by byte offset on the
client (one fast newline count), and each partition is read by its task: a 1M-line file is
never loaded into the driver. Each line is decoded and parsed on its own, so a malformed
line or an invalid UTF-8 byte becomes an error record naming the file and line, and the
rest of the file is read. Binary Parquet values are read as base64 text.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from recipe.errors import ConfigError, InputError
from recipe import storage
from recipe.stages.base import Stage
from recipe.stages.records import (surrogate_message, unencodable_field, ID, PARENT, RESERVED, SOURCE, error_record, foreign_reserved, is_error_line,
                                   make_id, root)

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db


_PLAN_CHUNK = 1 << 20


def _jsonl_blocks(path: str, lines_per_block: int) -> list[tuple[str, int, int, int]]:
    """(path, start byte, end byte, first line number) for blocks of ``lines_per_block`` lines.

    One streaming pass over the file in 1 MiB reads; each block is then read by its own task with
    one ranged read. Not ``for line in file``: on object storage fsspec's ``readline`` copies a
    whole block (up to 50 MiB with s3fs) for every line, and planning a 1M-line file on S3 ran for
    over 20 minutes.
    """
    blocks, start, line_no, block_first, offset, line_end = [], 0, 1, 1, 0, 0
    count = 0
    with storage.open_file(path, "rb") as handle:
        while chunk := handle.read(_PLAN_CHUNK):
            base, pos = offset, 0
            while (newline := chunk.find(b"\n", pos)) != -1:  # only \n ends a line (see _read_jsonl_block)
                pos = newline + 1
                line_end = base + pos
                count += 1
                line_no += 1
                if count == lines_per_block:
                    blocks.append((path, start, line_end, block_first))
                    start, block_first, count = line_end, line_no, 0
            offset = base + len(chunk)
    if offset > line_end:  # a last line without a newline
        count += 1
    if count:
        blocks.append((path, start, offset, block_first))
    return blocks


_BOM = b"\xef\xbb\xbf"


def _read_jsonl_block(block: tuple[str, int, int, int]) -> list[dict]:
    path, start, end, first_line = block
    name = storage.name(path)
    data = storage.read_range(path, start, end)
    if len(data) < end - start:  # the file was truncated or replaced since the blocks were planned
        raise InputError(f"{path} changed during the run: lines {first_line} and after are gone "
                         f"(expected {end - start} bytes at byte {start}, read {len(data)}); "
                         "restore the file or start a new run")
    if start == 0 and data.startswith(_BOM):  # UTF-8 with a byte-order mark (Windows editors)
        data = data[len(_BOM):]
    # One rule for planning (_jsonl_blocks) and parsing: only \n ends a line. A bare CR is
    # whitespace inside a JSON line, as JSON says; bytes.splitlines() would split there.
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    records: list[dict] = []
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        records.append(_parse_line(raw, path, name, number))
    return records


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_line(raw: bytes | str, path: str, name: str, number: int) -> dict:
    """One line: its record, or its error record naming file and line."""
    where = f"{path}:{number}"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        return error_record("read", InputError(f"{where}: invalid UTF-8 byte at column {exc.start + 1}"),
                            text.rstrip("\r"), where)
    except RecursionError:  # thousands of nested brackets: Python's parser gives up
        return error_record("read", InputError(f"{where}: JSON nested too deeply to read"),
                            text[:200] + "...", where)
    except ValueError as exc:
        return error_record("read", InputError(f"{where}: malformed JSON: {exc}"), text.rstrip("\r"), where)
    if is_error_line(value):  # a line of an errors/ file: retry the record that failed
        value = value["record"]
    if _SURROGATE_ESCAPE.search(text):  # a \ud800-\udfff escape: one lone half makes the record unusable
        field = unencodable_field(value)
        if field is not None:  # refused here, before any request is paid for it
            return error_record("read", InputError(f"{where}: {surrogate_message(field)}"), value, where)
        if isinstance(value, str):  # a line that did not parse then: parse it again
            return _parse_line(value, path, name, number)
    return _admit(value, where, make_id(name, number), f"{name}:{number}")


def _admit(value: Any, where: str, default_id: str, source: str) -> dict:
    """An input record with its identity, or an error record if it is not one we can take."""
    if not isinstance(value, dict):
        return error_record("read", InputError(f"{where}: a record must be a JSON object"), value, where)
    foreign = foreign_reserved(value)
    if foreign:
        err = InputError(f"{where}: field {', '.join(foreign)} is reserved for recipe's own bookkeeping "
                         f"({', '.join(RESERVED)}): rename it in the input")
        failed = error_record("read", err, value, where)
        failed[ID] = default_id
        return failed
    value.setdefault(ID, default_id)
    value.setdefault(PARENT, None)
    value.setdefault(SOURCE, source)
    return value


def _plain(value: Any) -> Any:
    """Binary values as base64 text, so that they survive JSON output and prompt templates."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read_parquet_group(item: tuple[str, int]) -> list[dict]:
    import pyarrow.parquet as pq

    path, group = item
    with storage.open_file(path, "rb") as handle:
        rows = pq.ParquetFile(handle).read_row_group(group).to_pylist()
    name = storage.name(path)
    return [_admit(_plain(row), f"{path}:rowgroup{group}:{index}", make_id(name, group, index),
                   f"{name}:rowgroup{group}:{index}") for index, row in enumerate(rows)]


def _read_item(item: tuple[str, Any]) -> list[dict]:
    kind, where = item
    return _read_jsonl_block(where) if kind == "jsonl" else _read_parquet_group(where)


def _read_items(items) -> list[dict]:
    return [record for item in items for record in _read_item(item)]


@dataclass
class ReadStage(Stage):
    """The first stage: ignores its input bag (pass ``None``) and returns the records.

    Args:
        path: a JSONL or Parquet file, a glob, or a list of them.
        seeds: records given inline instead (strings become ``{seed_field: s}``).
        partition_size: records per partition.

    Input columns: none. Output columns: the input's fields (see :meth:`input_fields`).
    """

    path: Any = None
    seeds: list = field(default_factory=list)
    seed_field: str = "seed"
    partition_size: Annotated[int, Field(ge=1)] = 256

    def rules(self):
        if self.path and not self.seeds:
            try:
                storage.resolve_paths(self.path)  # a missing file is refused before anything starts
            except ConfigError as exc:
                yield "path", str(exc)

    @property
    def outputs(self) -> set[str]:
        fields = self.input_fields()
        return set() if fields is None else fields

    def provides(self, available: set[str] | None) -> set[str] | None:
        return self.input_fields()  # the first stage: what came before does not count

    def input_fields(self) -> set[str] | None:
        """The fields the input provides, read cheaply: the seeds' common keys, else the first
        record of the first input file (a Parquet file's schema); None when that cannot be read."""
        if self.seeds:
            return set.intersection(*(set(r) for r in self._seed_records()))
        if not self.path:
            return None
        try:
            first = storage.resolve_paths(self.path)[0]
            if first.endswith((".parquet", ".pq")):
                import pyarrow.parquet as pq

                with storage.open_file(first, "rb") as handle:
                    return set(pq.ParquetFile(handle).schema_arrow.names)
            with storage.open_file(first, "rb") as handle:
                line = next((raw for raw in handle if raw.strip()), None)
            value = json.loads(line.decode("utf-8").lstrip("\ufeff")) if line else None
        except (ConfigError, OSError, ValueError):
            return None
        if isinstance(value, dict) and is_error_line(value):  # an errors/ file: its records are retried
            value = value["record"]
        return set(value) if isinstance(value, dict) else None

    def __call__(self, bag: db.Bag | None = None) -> db.Bag:
        return self.read(self.plan())

    def _seed_records(self) -> list[dict]:
        return [root(seed, self.seed_field, "seed", index) for index, seed in enumerate(self.seeds)]

    def plan(self) -> list[list]:
        """The input range of each partition, as JSON-able ``[kind, where]`` items.

        A run keeps the plan of its first attempt (``run.json``), so a resumed run reads the
        same partitions even if ``partition_size`` changed in between.
        """
        if self.seeds:
            n = len(self.seeds)
            return [["seeds", [start, min(n, start + self.partition_size)]]
                    for start in range(0, n, self.partition_size)]
        if not self.path:
            raise ConfigError(f"stage {self.name!r}: give a path (input=FILE) or seeds")
        items: list[list] = []
        for path in storage.resolve_paths(self.path):
            if path.endswith((".parquet", ".pq")):
                import pyarrow.parquet as pq

                with storage.open_file(path, "rb") as handle:
                    groups = pq.ParquetFile(handle).num_row_groups
                items += [["parquet", [path, g]] for g in range(groups)]
            else:
                items += [["jsonl", list(block)] for block in _jsonl_blocks(path, self.partition_size)]
        return items

    def read(self, plan: list[list]) -> db.Bag:
        """One partition per plan item."""
        import dask.bag as db

        if not plan:
            return db.from_sequence([], npartitions=1)
        if plan[0][0] == "seeds":
            records = self._seed_records()
            return db.from_sequence([records[a:b] for _, (a, b) in plan], npartitions=len(plan)).flatten()
        # one task per partition named after the stage (it shows as such in Dask's dashboard)
        return db.from_sequence([(kind, tuple(where)) for kind, where in plan],
                                npartitions=len(plan)).map_partitions(_read_items, token=self.name)
