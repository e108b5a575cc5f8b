"""Removing duplicates across the whole bag: exact (normalised text) or near (MinHash LSH).

A duplicate may sit in any partition, on any worker, so one partition cannot decide alone.
Each record gets a source position, ``(partition << 32) | index``, which is input order.
Every record emits signature keys (one hash of its normalised text, or one hash per LSH band
of its MinHash); Dask's own DataFrame shuffle brings each key's records together, and there
the earliest record of a bucket is the one every other member duplicates. A second shuffle
(``set_index`` on the position, with divisions aligned to the bag's partitions) routes each
verdict back to the partition holding its record, where the record is dropped, or kept with
its neighbours. A record is removed when it shares a bucket with an *earlier* record, and
points at the earliest such record: the first occurrence is always kept, whatever the
partitioning or scheduling, and a record is never removed because of a chain of candidates.

MinHash and the LSH band layout come from ``datasketch`` (``MinHash.bulk``, ``MinHashLSH``'s
optimal ``(b, r)`` for the threshold); only the grouping, which must span processes, is ours.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from recipe.errors import MissingFieldError, ConfigError
from recipe.stages import progress
from recipe.stages.base import Stage
from recipe.stages.partition import Partition, carry, dropped
from recipe.stages.records import error_record, is_error, record_id

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db

DUPLICATE_OF = "_duplicate_of"
_WORD = re.compile(r"\w+")
_POS_BITS = 32


def normalize(text: str) -> str:
    """NFKC, casefolded, runs of whitespace as one space: what "the same text" means here."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _key(data: bytes) -> int:
    """A signed 64-bit key (an int64 column); collisions at 2**-64 per pair are negligible."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def shingles(text: str, ngram: int, unit: str = "char") -> list[bytes]:
    """Character (or word) n-grams of the normalised text; a shorter text is one shingle.

    Characters by default: on short generated texts, one word swapped in forty leaves a
    5-gram Jaccard near 0.93 (word 3-grams: 0.85), well above a 0.8 threshold.
    """
    if unit == "word":
        words = _WORD.findall(normalize(text))
        if len(words) <= ngram:
            return [" ".join(words).encode()]
        return list({" ".join(words[i:i + ngram]).encode() for i in range(len(words) - ngram + 1)})
    text = normalize(text)
    if len(text) <= ngram:
        return [text.encode()]
    return list({text[i:i + ngram].encode() for i in range(len(text) - ngram + 1)})


@lru_cache(maxsize=16)
def _lsh_layout(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """datasketch's band ranges for the threshold (false positives and negatives weighted alike)."""
    from datasketch import MinHashLSH

    return tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)


def _text(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class DedupStage(Stage):
    """Drop every record whose ``field`` duplicates an earlier record's.

    ``method: exact`` compares normalised text (NFKC, case, whitespace). ``method: minhash``
    finds near-duplicates: estimated Jaccard similarity of ``ngram``-shingles (characters, or
    words with ``shingle: word``) at or above ``threshold``, with ``num_perm`` permutations
    (a record sharing an LSH band with an earlier one). Removed records are counted in stats.json
    (``deduplicated``, by stage); with ``keep_removed`` they are written to
    ``<output_dir>/removed/<stage>/`` carrying ``_duplicate_of``, the ``_id`` of the record
    they duplicate. ``shuffle_partitions`` sets the shuffle's width (default: a sixteenth of
    the bag's partitions). Error records pass through; a record without ``field`` becomes one.

    Input columns: ``field``. Output columns: none (records are dropped, not changed).
    """

    whole_bag: ClassVar[bool] = True  # a partition's output depends on every earlier partition (target.py)

    field: str = "text"
    method: Literal["exact", "minhash"] = "exact"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    num_perm: Annotated[int, Field(ge=2)] = 128
    ngram: Annotated[int, Field(ge=1)] = 5
    shingle: Literal["char", "word"] = "char"  # what an n-gram counts
    seed: int = 1
    keep_removed: bool = False
    output_dir: str | None = None  # the runner fills in the run's output_dir
    shuffle_partitions: Annotated[int, Field(ge=1)] | None = None

    @property
    def inputs(self) -> set[str]:
        return {self.field}

    # --- per record: the keys ---------------------------------------------------------------
    def keys(self, texts: list[str]) -> list[list[int]]:
        """The signature keys of each text: one for exact, one per LSH band for minhash."""
        if self.method == "exact":
            return [[_key(normalize(t).encode())] for t in texts]
        from datasketch import MinHash

        layout = _lsh_layout(self.threshold, self.num_perm)
        # crc32 (C, no Python frame per shingle) rather than datasketch's default sha1 wrapper,
        # which was 40% of the stage's time; datasketch mixes it (fmix) before its permutations.
        hashes = MinHash.bulk([shingles(t, self.ngram, self.shingle) for t in texts], num_perm=self.num_perm,
                              seed=self.seed, hashfunc=zlib.crc32)
        return [[_key(band.to_bytes(2, "little") + m.hashvalues[start:end].tobytes())
                 for band, (start, end) in enumerate(layout)] for m in hashes]

    # --- the graph --------------------------------------------------------------------------
    def __call__(self, bag: db.Bag) -> db.Bag:
        import dask.bag as db
        from dask import delayed

        if self.keep_removed and not self.output_dir:
            raise ConfigError(f"stage {self.name!r}: keep_removed needs output_dir (set output_dir)")
        # Unoptimised: the partitions keep their keys, so the records are computed once (by
        # upstream LLM stages) and shared by the signatures and the final filter.
        parts = bag.to_delayed(optimize_graph=False)
        n = len(parts)
        width = max(1, min(n, self.shuffle_partitions or -(-n // 16)))
        step = -(-n // width)
        groups = -(-n // step)
        index = db.from_sequence(range(n), npartitions=n)
        # Bag.to_dataframe rather than dd.from_delayed: the latter's alias keys trip the bag
        # optimiser's linear fusion when the frame's partitions come back into a bag (dask 2026.8).
        signatures = bag.map_partitions(_signatures, index, self, token=f"{self.name}-signatures")
        signatures = signatures.to_dataframe(meta=_signatures_meta())
        # The task-based shuffle: P2P's barrier does not survive the bag optimiser's fusion once
        # the frame's partitions come back into a bag (distributed#7816).
        verdicts = signatures.shuffle(on="key", npartitions=width, shuffle_method="tasks")
        verdicts = verdicts.map_partitions(_bucket_verdicts, meta=_verdicts_meta())
        divisions = [g * step << _POS_BITS for g in range(groups)] + [n << _POS_BITS]
        routed = verdicts.set_index("pos", divisions=divisions, shuffle_method="tasks").to_delayed()
        filter_part = delayed(_filter_partition, pure=True)
        kept = [filter_part(p, i, routed[i // step], self, dask_key_name=f"{self.name}-{i}-{bag.name}")
                for i, p in enumerate(parts)]
        return db.from_delayed(kept)


def _signatures_meta():
    import pandas as pd

    return pd.DataFrame({"key": pd.Series(dtype="int64"), "pos": pd.Series(dtype="int64"),
                         "rid": pd.Series(dtype="object")})


def _verdicts_meta():
    import pandas as pd

    return pd.DataFrame({"pos": pd.Series(dtype="int64"), "dup": pd.Series(dtype="int64"),
                         "dup_id": pd.Series(dtype="object")})


def _signatures(records, numbers: list[int], stage: DedupStage) -> list[tuple[int, int, str | None]]:
    """``(key, pos, rid)`` rows for the partition's records (error records and field-less ones emit none)."""
    (index,) = numbers  # the partition's number, as a one-item partition of the index bag
    positions, texts, ids = [], [], []
    for offset, record in enumerate(records):
        if is_error(record):
            continue
        text = _text(record, stage.field)
        if text is None:
            continue
        positions.append((index << _POS_BITS) | offset)
        texts.append(text)
        ids.append(record_id(record) if stage.keep_removed else None)
    return [(key, pos, rid) for keys, pos, rid in zip(stage.keys(texts), positions, ids) for key in keys]


def _bucket_verdicts(frame):
    """Within each bucket (all of a key's rows are here after the shuffle), every member but the
    earliest duplicates the earliest: ``pos, dup, dup_id`` for those members."""
    import pandas as pd

    if frame.empty:
        return _verdicts_meta()
    frame = frame.sort_values(["key", "pos"], kind="stable").reset_index(drop=True)
    grouped = frame.groupby("key", sort=False)
    first = grouped["pos"].transform("first")
    first_id = grouped["rid"].transform("first")
    later = frame["pos"] != first
    return pd.DataFrame({"pos": frame["pos"][later].to_numpy(), "dup": first[later].to_numpy(),
                         "dup_id": first_id[later].to_numpy()})


def _filter_partition(records, index: int, verdicts, stage: DedupStage) -> list[dict]:
    """The partition's records minus those with a verdict; each removed one duplicates the
    earliest record among its buckets' first members."""
    source, records = records, list(records)
    lo, hi = index << _POS_BITS, (index + 1) << _POS_BITS
    mine = verdicts[(verdicts.index >= lo) & (verdicts.index < hi)]
    dup_of: dict[int, Any] = {}
    if len(mine):
        best = mine.reset_index().sort_values(["pos", "dup"], kind="stable").drop_duplicates("pos")
        dup_of = dict(zip((best["pos"] - lo).tolist(), best["dup_id"].tolist()))
    out, removed = [], []
    for offset, record in enumerate(records):
        if is_error(record):
            out.append(record)
        elif stage.field not in record or record[stage.field] is None:
            out.append(error_record(stage.name, MissingFieldError(f"record has no field {stage.field!r} to deduplicate"),
                                    record))
        elif offset in dup_of:
            removed.append({**record, DUPLICATE_OF: dup_of[offset]})
        else:
            out.append(record)
    if removed:
        progress.deduplicated(stage.name, index, len(removed))
        if stage.keep_removed and stage.output_dir is not None:  # rules(): keep_removed needs output_dir
            from recipe.stages.io.write import _write_jsonl
            from recipe.storage.run_folder import removed_part

            _write_jsonl(removed_part(stage.output_dir, stage.name, index), removed)
    return carry(Partition(records, dropped(source)), out,
                 deduplicated={stage.name: len(removed)} if removed else None, stage=stage.name)
