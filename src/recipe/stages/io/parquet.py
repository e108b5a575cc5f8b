"""Parquet parts that keep every field and read back as one dataset.

``pa.Table.from_pylist`` takes its columns from the first record, so a field that first
appears later would be dropped, and a field holding an int in one record and a string in
another raises. Here each partition is written with the union of its records' fields, column
by column; a column whose values have no common Arrow type is stored as JSON text (each value
``json.dumps``-ed, nulls kept as nulls) and named in the file's metadata, the manifest and
``stats.json`` (``json_fields``).

Parts are written in parallel, so they can still disagree with each other (a field absent from
one part, an int column in one and a double in another). :func:`unify_parts` runs after each
attempt: it reads the parts' footers, builds one schema for the run (numeric types widened as
Arrow's permissive promotion does, every field nullable) and rewrites the parts that differ,
so that readers that take the schema from one file (pyarrow.dataset, dask) see every field.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recipe.storage.run_folder import atomic_write
from recipe import storage

JSON_FIELDS_KEY = b"recipe.json_fields"
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                      ValueError)


def _writable(dtype: pa.DataType) -> bool:
    """Parquet cannot store a struct without children (``{}`` values)."""
    if pa.types.is_struct(dtype):
        return dtype.num_fields > 0 and all(_writable(dtype.field(i).type) for i in range(dtype.num_fields))
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _writable(dtype.value_type)
    return True


def _json_text(values: list) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
                    type=pa.string())


def _column(values: list) -> tuple[pa.Array, bool]:
    """The values as one Arrow column, or as JSON text when they share no type (True)."""
    try:
        array = pa.array(values)
        if _writable(array.type):
            return array, False
    except _CONVERSION_ERRORS:
        pass
    return _json_text(values), True


def _names(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            seen.setdefault(key, None)
    return list(seen)


def table_for(records: list[dict]) -> tuple[pa.Table, list[str]]:
    """A table with every field of every record, and the fields stored as JSON text."""
    columns, json_fields = {}, []
    for name in _names(records):
        columns[name], as_json = _column([record.get(name) for record in records])
        if as_json:
            json_fields.append(name)
    table = pa.table(columns)
    return table.replace_schema_metadata({JSON_FIELDS_KEY: json.dumps(json_fields).encode()}), json_fields


def write_part(path: str | Path, records: list[dict]) -> list[str]:
    """Write one partition atomically; returns the fields stored as JSON text."""
    table, json_fields = table_for(records)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return json_fields


def _write_table(table: pa.Table, tmp: Path) -> None:
    pq.write_table(table, tmp)


def _json_fields(schema: pa.Schema) -> set[str]:
    raw = (schema.metadata or {}).get(JSON_FIELDS_KEY)
    return set(json.loads(raw)) if raw else set()


def _run_schema(schemas: list[pa.Schema]) -> tuple[pa.Schema, set[str]]:
    """One schema for every part: field order of first appearance; conflicting fields become JSON text."""
    as_json: set[str] = set().union(*(_json_fields(s) for s in schemas))
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for item in schema:
            types.setdefault(item.name, []).append(item.type)
    fields = []
    for name, seen in types.items():
        target = pa.string()
        if name not in as_json:
            try:
                target = pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in seen],
                                          promote_options="permissive").field(name).type
            except _CONVERSION_ERRORS:
                as_json.add(name)
        fields.append(pa.field(name, target, nullable=True))
    return pa.schema(fields, metadata={JSON_FIELDS_KEY: json.dumps(sorted(as_json)).encode()}), as_json


def unify_parts(directory: str | Path) -> list[str]:
    """Give every ``part-*.parquet`` of a run one schema; returns the fields stored as JSON text."""
    parts = storage.listdir(str(directory), "part-*.parquet")
    if not parts:
        return []
    schemas = []
    for part in parts:
        with storage.open_file(part, "rb") as handle:
            schemas.append(pq.read_schema(handle))
    target, as_json = _run_schema(schemas)
    for path, schema in zip(parts, schemas):
        if schema.equals(target, check_metadata=True):
            continue
        with storage.open_file(path, "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
        for name in as_json - _json_fields(schema):  # raw values of a field that is JSON text elsewhere
            for row in rows:
                if row.get(name) is not None:
                    row[name] = json.dumps(row[name], ensure_ascii=False, default=str)
        table = pa.Table.from_pylist(rows, schema=target)
        atomic_write(path, partial(_write_table, table))
    return sorted(as_json)
