"""The ``dataset`` sampler: a value (``field``) or a whole record drawn from a JSONL or Parquet file,
or a Hugging Face dataset folder (its Parquet or JSONL files, in name order).

The rows are read once per process. With ``replace: false`` each pass over the rows is a keyed
permutation, and record ``i`` takes row ``i`` of it: no row repeats until every row was taken.
That needs the record's index, so it is for a sampled source (``n``), not added columns.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import numpy as np

from recipe.stages.samplers.keyed import Draws, stream, uniforms

_SUFFIXES = (".jsonl", ".json", ".parquet", ".pq")


def _files(path: str) -> list[str]:
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                       if name.endswith(_SUFFIXES) and not name.startswith("."))
        if not found:
            raise ValueError(f"path={path!r}: the folder holds no .jsonl or .parquet file")
        return found
    if not os.path.isfile(path):
        raise ValueError(f"path={path!r}: no such file or folder")
    return [path]


def rows(path: str) -> tuple:
    """Every row of the dataset at ``path``, as dicts: read once per process while its files stay
    the same (a file edited between two runs in one process is read again)."""
    files = _files(path)
    stamp = tuple((name, os.stat(name).st_size, os.stat(name).st_mtime_ns) for name in files)
    return _read_rows(path, stamp)


@lru_cache(maxsize=8)
def _read_rows(path: str, stamp: tuple) -> tuple:
    out: list[dict] = []
    for name, _, _ in stamp:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            out += pq.read_table(name).to_pylist()
            continue
        with open(name, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        value = json.loads(line)
                    except ValueError as exc:
                        raise ValueError(f"path={name!r} line {number}: malformed JSON: {exc}") from None
                    out.append(value if isinstance(value, dict) else {"value": value})
    if not out:
        raise ValueError(f"path={path!r}: the dataset has no rows")
    return tuple(out)


def check(p: dict) -> list[str]:
    if not isinstance(p.get("path"), str):
        return [f"path must name a JSONL or Parquet file or a dataset folder, not {p.get('path')!r}"]
    if not isinstance(p.get("replace", True), bool):
        return [f"replace must be true or false, not {p['replace']!r}"]
    try:
        data = rows(p["path"])
    except (OSError, ValueError) as exc:
        return [str(exc).removeprefix("ValueError: ")]
    field = p.get("field")
    if field is not None and field not in data[0]:
        return [f"field={field!r} is not a field of {p['path']} (its fields: {', '.join(map(str, data[0]))})"]
    return []


@lru_cache(maxsize=32)
def _permutation(seed: int, column: str, size: int, cycle: int) -> np.ndarray:
    keys = np.arange(size, dtype=np.uint64)
    return np.argsort(uniforms(keys, stream(seed, column, -1, cycle)), kind="stable")


def draw(p: dict, d: Draws, ctx: Any) -> np.ndarray:
    data = rows(p["path"])
    size = len(data)
    if p.get("replace", True):
        index = np.minimum(np.floor(d.u() * size).astype(np.int64), size - 1)
    else:
        index = np.empty(len(d), dtype=np.int64)
        cycles, positions = np.divmod(d.keys.astype(np.int64), size)
        for cycle in np.unique(cycles).tolist():
            mask = cycles == cycle
            index[mask] = _permutation(d.seed, d.column, size, cycle)[positions[mask]]
    field = p.get("field")
    out = np.empty(len(d), dtype=object)
    out[:] = [data[i][field] if field is not None else dict(data[i]) for i in index.tolist()]
    return out
