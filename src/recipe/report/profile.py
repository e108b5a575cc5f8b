"""Field profiles computed in one streamed pass over every record, a deterministic sample of
records for the browser, and error records grouped by class.

Memory stays bounded whatever the run's size: distinct values are counted exactly up to
:data:`DISTINCT_EXACT` and estimated beyond (adaptive sampling of value hashes), top values are
kept in a pruned counter (exact until :data:`TOP_KEEP` distinct values, approximate after, and
the profile says so), numbers are kept for the histogram up to :data:`NUMBERS_KEPT` (every
other one after that, again and again). The sample is the :data:`SAMPLE_SIZE` records whose
``_id`` hashes lowest: the same records on every rebuild of the same run, spread over all parts.
"""

from __future__ import annotations

import heapq
import json
import math
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LINEAGE = ("_id", "_parent", "_source")
SAMPLE_SIZE = 10_000
CLIP_CHARS = 1_000  # a string value longer than this is clipped in the browser (and says so)
CLIP_ITEMS = 100  # list items shown
CLIP_DEPTH = 8  # nesting levels shown
TOP_SHOWN = 10
TOP_KEEP = 20_000
TOP_CHARS = 120
DISTINCT_EXACT = 100_000
NUMBERS_KEPT = 1_000_000
NESTED_DEPTH = 2  # objects are profiled by key this deep ("scores.accuracy")
NESTED_KEYS = 50  # keys profiled per object field (the rest counted as one)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _arrow_kind(dtype: Any) -> str:
    import pyarrow as pa

    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return "list"
    if pa.types.is_struct(dtype):
        return "object"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)


class _Distinct:
    """Distinct values: exact up to a bound, then an estimate by adaptive hash sampling (a value
    is kept when its hash's low ``level`` bits are zero; the estimate is ``kept * 2**level``)."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()
        self.level = 0

    def add(self, key: int) -> None:
        if self.level and key & ((1 << self.level) - 1):
            return
        self.hashes.add(key)
        if len(self.hashes) > DISTINCT_EXACT:
            self._raise()

    def add_many(self, keys: Any) -> None:
        if self.level:
            mask = (1 << self.level) - 1
            keys = [k for k in keys if not k & mask]
        self.hashes.update(keys)
        while len(self.hashes) > DISTINCT_EXACT:
            self._raise()

    def _raise(self) -> None:
        self.level += 1
        mask = (1 << self.level) - 1
        self.hashes = {h for h in self.hashes if not h & mask}

    @property
    def exact(self) -> bool:
        return self.level == 0

    def count(self) -> int:
        return len(self.hashes) << self.level


def _key(value: Any) -> tuple[int, str | None]:
    """(hash for distinct counting, text for top values or None)."""
    if isinstance(value, str):
        return hash(value), value[:TOP_CHARS]
    if isinstance(value, (bool, int, float)):  # (a field holds one of them: their hashes need not differ)
        return hash(value), json.dumps(value)
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hash(text), None


@dataclass
class FieldProfile:
    """One field (or one key of an object field) over every record."""

    name: str
    depth: int = 0
    present: int = 0
    nulls: int = 0
    types: Counter = field(default_factory=Counter)
    lengths: Counter = field(default_factory=Counter)  # text length -> records
    list_lengths: Counter = field(default_factory=Counter)
    top: Counter = field(default_factory=Counter)
    top_pruned: bool = False
    numbers: array = field(default_factory=lambda: array("d"))
    number_chunks: list = field(default_factory=list)  # numpy arrays from columnar parts
    number_stride: int = 1
    number_count: int = 0
    number_sum: float = 0.0
    number_min: float = math.inf
    number_max: float = -math.inf
    keys: dict = field(default_factory=dict)  # key -> FieldProfile of an object field
    other_keys: int = 0
    distinct: _Distinct = field(default_factory=_Distinct)
    distinct_skipped: int = 0  # list and object values of columnar parts: not counted

    def add_column(self, column: Any) -> None:
        """Every value of a pyarrow array at once (a JSONL or Parquet part read by Arrow); a
        missing field reads as null there, so it is counted as a null."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        total, nulls = len(column), column.null_count
        self.present += total
        self.nulls += nulls
        if nulls:
            self.types["null"] += nulls
            column = column.drop_null()
        if not len(column):
            return
        kind = _arrow_kind(column.type)
        self.types[kind] += len(column)
        if kind == "text":
            self._lengths(pc.utf8_length(column).to_numpy(zero_copy_only=False))
            self._value_counts(column, str)
        elif kind in ("integer", "number"):
            data = column.to_numpy(zero_copy_only=False).astype("float64")
            data = data[np.isfinite(data)]
            if len(data):
                self.number_count += len(data)
                self.number_sum += float(data.sum())
                self.number_min = min(self.number_min, float(data.min()))
                self.number_max = max(self.number_max, float(data.max()))
                self.number_chunks.append(data[::self.number_stride])
                if sum(len(c) for c in self.number_chunks) > NUMBERS_KEPT:
                    self.number_chunks = [np.concatenate(self.number_chunks)[::2]]
                    self.number_stride *= 2
            self._value_counts(column, None if kind == "number" else int)
        elif kind == "boolean":
            self._value_counts(column, bool)
        elif kind == "list":
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            values, counts = np.unique(lengths, return_counts=True)
            self.list_lengths.update(dict(zip(values.tolist(), counts.tolist())))
            self.distinct_skipped += len(column)
        elif kind == "object":
            self.distinct_skipped += len(column)
            if self.depth < NESTED_DEPTH:
                for index in range(column.type.num_fields):
                    key = column.type.field(index).name
                    profile = self.keys.get(key)
                    if profile is None:
                        if len(self.keys) >= NESTED_KEYS:
                            self.other_keys += 1
                            continue
                        profile = self.keys[key] = FieldProfile(f"{self.name}.{key}", self.depth + 1)
                    profile.add_column(column.field(index))
        else:
            self.distinct_skipped += len(column)

    def _lengths(self, lengths: Any) -> None:
        import numpy as np

        values, counts = np.unique(lengths, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.lengths[value] += count

    def _value_counts(self, column: Any, kind: Any) -> None:
        """Distinct values (hashes) and top values of a column, from Arrow's value counts; once
        the top values were pruned, a value seen once in a part cannot make the top any more."""
        import pyarrow.compute as pc

        counted = pc.value_counts(column)
        values, counts = counted.field("values"), counted.field("counts")
        self.distinct.add_many(map(hash, values.to_pylist()))
        if kind is None:
            return
        if self.top_pruned:
            repeated = pc.greater(counts, 1)
            values, counts = values.filter(repeated), counts.filter(repeated)
        if kind is str:
            values = pc.utf8_slice_codeunits(values, 0, TOP_CHARS)
        texts = values.to_pylist()
        if kind is int:  # as JSON writes them
            texts = [str(v) for v in texts]
        elif kind is bool:
            texts = ["true" if v else "false" for v in texts]
        top = self.top
        for text, count in zip(texts, counts.to_pylist()):
            top[text] += count
        if len(top) > TOP_KEEP:
            self.top = Counter(dict(top.most_common(TOP_KEEP // 4)))
            self.top_pruned = True

    def add(self, value: Any) -> None:
        """One value (a record read line by line)."""
        self.present += 1
        kind = type_name(value)
        self.types[kind] += 1
        if value is None:
            self.nulls += 1
            return
        if kind == "text":
            self.lengths[len(value)] += 1
        elif kind in ("integer", "number"):
            self._number(float(value))
        elif kind == "list":
            self.list_lengths[len(value)] += 1
        elif kind == "object" and self.depth < NESTED_DEPTH:
            for key, item in value.items():
                profile = self.keys.get(key)
                if profile is None:
                    if len(self.keys) >= NESTED_KEYS:
                        self.other_keys += 1
                        continue
                    profile = self.keys[key] = FieldProfile(f"{self.name}.{key}", self.depth + 1)
                profile.add(item)
        if kind in ("list", "object") or kind not in ("text", "integer", "number", "boolean"):
            self.distinct_skipped += 1  # as the columnar path: distinct values of scalars only
            return
        digest, text = _key(value)
        self.distinct.add(digest)
        if text is not None and kind != "number":
            self.top[text] += 1
            if len(self.top) > TOP_KEEP:
                self.top = Counter(dict(self.top.most_common(TOP_KEEP // 4)))
                self.top_pruned = True

    def _number(self, value: float) -> None:
        if math.isnan(value) or math.isinf(value):
            return
        self.number_count += 1
        self.number_sum += value
        self.number_min = min(self.number_min, value)
        self.number_max = max(self.number_max, value)
        if self.number_count % self.number_stride == 0:
            self.numbers.append(value)
            if len(self.numbers) > NUMBERS_KEPT:
                self.numbers = self.numbers[::2]
                self.number_stride *= 2

    def summary(self, records: int) -> dict:
        """The profile as the page shows it; ``records`` is how many records (or parent objects) there were."""
        main = self.types.most_common(1)[0][0] if self.types else "null"
        kinds = {k: v for k, v in self.types.items() if k != "null"}
        out: dict[str, Any] = {
            "name": self.name, "type": max(kinds, key=kinds.get) if kinds else main, "types": dict(self.types),
            "present": self.present, "missing": records - self.present, "nulls": self.nulls,
            "distinct": self.distinct.count(), "distinct_exact": self.distinct.exact and not self.distinct_skipped,
            "top": [[text, count] for text, count in self.top.most_common(TOP_SHOWN)],
            "top_approximate": self.top_pruned,
        }
        if self.lengths:
            out["lengths"] = _histogram_counts(self.lengths)
            total = sum(self.lengths.values())
            out["length_mean"] = round(sum(k * v for k, v in self.lengths.items()) / total, 1)
            out["length_max"] = max(self.lengths)
        if self.list_lengths:
            out["list_lengths"] = _histogram_counts(self.list_lengths)
        if self.number_count:
            out["numbers"] = {"count": self.number_count, "min": self.number_min, "max": self.number_max,
                              "mean": float(f"{self.number_sum / self.number_count:.12g}"),  # any summing order
                              "histogram": _histogram_values(self.numbers, self.number_chunks),
                              "sampled": self.number_stride > 1}
        if self.keys:
            objects = self.types.get("object", 0)
            out["keys"] = [p.summary(objects) for p in self.keys.values()]
            out["other_keys"] = self.other_keys
        return out


def _histogram_counts(counts: Counter, bins: int = 30) -> dict:
    """Bars over integer values (lengths) held as value -> count."""
    low, high = min(counts), max(counts)
    if high - low < bins:
        xs = list(range(low, high + 1))
        return {"x": xs, "y": [counts.get(x, 0) for x in xs], "width": 1}
    width = math.ceil((high - low + 1) / bins)
    ys = [0] * bins
    for value, count in counts.items():
        ys[min(bins - 1, (value - low) // width)] += count
    return {"x": [low + i * width + width / 2 for i in range(bins)], "y": ys, "width": width}


def _histogram_values(values: array, chunks: list, bins: int = 30) -> dict:
    import numpy as np

    data = np.concatenate([np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0), *chunks])
    if not len(data):
        return {"x": [], "y": [], "width": 1}
    low, high = float(data.min()), float(data.max())
    if low == high:
        return {"x": [low], "y": [int(len(data))], "width": 1}
    if np.all(data == np.round(data)) and high - low < bins:  # small integers (scores): one bar each
        xs = np.arange(low, high + 1)
        ys = [int(np.count_nonzero(data == x)) for x in xs]
        return {"x": xs.tolist(), "y": ys, "width": 1}
    ys, edges = np.histogram(data, bins=bins)
    return {"x": ((edges[:-1] + edges[1:]) / 2).tolist(), "y": ys.tolist(), "width": float(edges[1] - edges[0])}


# ---- clipping ----------------------------------------------------------------------------------

def clip(value: Any, clipped: list, path: str = "", depth: int = 0, chars: int = CLIP_CHARS) -> Any:
    """``value`` made small and JSON-safe for the page: long text cut to ``chars``, long lists to
    :data:`CLIP_ITEMS`, nesting to :data:`CLIP_DEPTH`, bytes named; each cut is added to ``clipped``."""
    if isinstance(value, str):
        if len(value) > chars:
            clipped.append({"path": path, "chars": len(value)})
            return value[:chars]
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        clipped.append({"path": path, "bytes": len(value)})
        return f"<{len(value)} bytes of binary data>"
    if depth >= CLIP_DEPTH and isinstance(value, (dict, list)):
        clipped.append({"path": path, "depth": depth})
        return f"<nested deeper than {CLIP_DEPTH} levels>"
    if isinstance(value, dict):
        return {str(k): clip(v, clipped, f"{path}.{k}" if path else str(k), depth + 1, chars) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [clip(v, clipped, f"{path}[{i}]", depth + 1, chars) for i, v in enumerate(value[:CLIP_ITEMS])]
        if len(value) > CLIP_ITEMS:
            clipped.append({"path": path, "items": len(value)})
        return items
    return str(value)


# ---- the pass over every record ------------------------------------------------------------------

def _order_key(record: dict, position: int) -> int:
    """The sample's order: the ``_id``'s own hash bits when it is ours (hex), else a CRC of the position."""
    rid = record.get("_id")
    if isinstance(rid, str) and len(rid) >= 15:
        try:
            return int(rid[:15], 16)
        except ValueError:
            pass
    text = rid if isinstance(rid, str) else str(position)
    return zlib.crc32(text.encode("utf-8", "replace")) << 28


class Profiler:
    """Fed every good record once (:meth:`add`); keeps the profiles and the browser's sample."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, expected: int | None = None) -> None:
        self.records = 0
        self.fields: dict[str, FieldProfile] = {}
        self.sample_size = sample_size
        # Order keys are uniform over [0, 2**60): with the run's size known (its manifests), a
        # record whose key is beyond 1.5 times the expected share cannot end in the sample, and is
        # never made into a Python record (0 when the sample holds every record anyway).
        share = 1.5 * sample_size / expected if expected else 1.0
        self.cutoff = (1 << 60) if share >= 1 else int((1 << 60) * share)
        self._heap: list[tuple[int, int, dict]] = []  # (-order key, position, record): the lowest keys kept

    def add(self, record: dict) -> None:
        position = self.records
        self.records += 1
        for name, value in record.items():
            if name in LINEAGE:
                continue
            profile = self.fields.get(name)
            if profile is None:
                profile = self.fields[name] = FieldProfile(name)
            profile.add(value)
        if not self.sample_size:
            return
        key = _order_key(record, position)
        if key >= self.cutoff:
            return
        if len(self._heap) < self.sample_size:
            heapq.heappush(self._heap, (-key, position, _browsable(record, position)))
        elif -self._heap[0][0] > key:
            heapq.heapreplace(self._heap, (-key, position, _browsable(record, position)))

    def add_table(self, table: Any) -> None:
        """A whole part read by Arrow: its columns profiled at once, only the rows the sample takes
        made into Python records."""
        start = self.records
        self.records += table.num_rows
        for name in table.column_names:
            if name in LINEAGE:
                continue
            profile = self.fields.get(name)
            if profile is None:
                profile = self.fields[name] = FieldProfile(name)
            profile.add_column(table.column(name))
        if not self.sample_size or not table.num_rows:
            return
        offsets = range(table.num_rows)
        ids = table.column("_id") if "_id" in table.column_names else None
        if ids is not None and self.cutoff < (1 << 60) and _arrow_kind(ids.type) == "text":
            import pyarrow.compute as pc

            # our ids are 16 hex digits: the first 15 compare as text as they do as numbers
            ours = pc.all(pc.match_substring_regex(ids, "^[0-9a-f]{15}")).as_py()
            if ours:
                below = pc.less(pc.utf8_slice_codeunits(ids, 0, 15), f"{self.cutoff:015x}")
                offsets = [i for i, keep in enumerate(below.to_pylist()) if keep]
        ids = ids.to_pylist() if ids is not None else None
        wanted = []
        for offset in offsets:
            key = _order_key({"_id": ids[offset] if ids is not None else None}, start + offset)
            if key >= self.cutoff:
                continue
            if len(self._heap) + len(wanted) < self.sample_size or key < -self._heap[0][0]:
                wanted.append((key, offset))
        if not wanted:
            return
        rows = table.take([offset for _, offset in wanted]).to_pylist()
        for (key, offset), row in zip(wanted, rows):
            if len(self._heap) < self.sample_size:
                heapq.heappush(self._heap, (-key, start + offset, _browsable(row, start + offset)))
            elif -self._heap[0][0] > key:
                heapq.heapreplace(self._heap, (-key, start + offset, _browsable(row, start + offset)))

    def sample(self) -> list[dict]:
        """The sampled records in output order."""
        return [item for _, _, item in sorted(self._heap, key=lambda entry: entry[1])]

    def profiles(self) -> list[dict]:
        return [p.summary(self.records) for p in self.fields.values()]


def _browsable(record: dict, position: int) -> dict:
    clipped: list = []
    return {"n": position, "r": clip(record, clipped), "clipped": clipped}


class ErrorGroups:
    """Error records by class: counts, the stages they failed in, and the first examples."""

    EXAMPLES = 20

    def __init__(self) -> None:
        self.total = 0
        self.classes: dict[str, dict] = {}

    def add(self, record: dict) -> None:
        self.total += 1
        info = record.get("_error") if isinstance(record.get("_error"), dict) else {}
        name = str(info.get("class") or "unknown")
        group = self.classes.setdefault(name, {"class": name, "count": 0, "stages": Counter(), "examples": []})
        group["count"] += 1
        group["stages"][str(info.get("stage") or "?")] += 1
        if len(group["examples"]) < self.EXAMPLES:
            clipped: list = []
            group["examples"].append({"error": clip(info, clipped, "_error"), "id": clip(record.get("_id"), clipped),
                                      "record": clip(record.get("record"), clipped, "record"), "clipped": clipped})

    def groups(self) -> list[dict]:
        ordered = sorted(self.classes.values(), key=lambda g: (-g["count"], g["class"]))
        return [{**g, "stages": dict(g["stages"])} for g in ordered]
