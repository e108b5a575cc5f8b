"""The run folder: what makes a rerun of the same command continue, never repeat or mix.

Layout (``D`` is ``output_dir``, or ``<RECIPE_RUNS_DIR>/<recipe>-<hash>``)::

    D/run.json                   the config hash and identity, and the partition plan (fixed at attempt 1)
    D/part-NNNNN.<fmt>           good records of partition N
    D/errors/part-NNNNN.jsonl    error records of partition N
    D/manifests/part-NNNNN.json  written last, atomically: partition N is committed
    D/attempts/attempt-NNN.json  what each attempt sent and received (requests, tokens, time)
    D/stats.json                 the whole run's account, summed over attempts
    D/.hydra/, D/recipe.log      Hydra's composed config and the log (the CLI's run dir is D)

A partition counts as done only while its manifest exists and the files it names are there with the
records it counts (:func:`intact`): its part file and error file were both replaced before it, so a
crash anywhere in between, or a part file deleted or cut by hand later, makes the next attempt redo
the partition. A partition that ``target.records`` cut short (``trimmed_from`` in its manifest) is
kept by the runs that want at most that many records, and done again by any other run.
Everything here goes through :mod:`recipe.storage`, so ``D`` may be a local path or an
fsspec URL (``s3://bucket/run``): every file is committed whole (a rename locally, one PUT on an
object store), and the manifests there make resume work from any machine. The CLI checks a folder
before Hydra writes into it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from recipe.redaction import redact
from recipe.errors import ConfigError
from recipe import storage

RUN_FILE = "run.json"
MANIFESTS = "manifests"
ATTEMPTS = "attempts"
ERRORS = "errors"
STATS = "stats.json"
BATCHES = "batches"  # one record per provider batch created (recipe.clients.batch)
REMOVED = "removed"  # dedup's keep_removed: removed/<stage>/part-NNNNN.jsonl
LOCK = ".lock"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def batches_dir(run_dir: str | os.PathLike) -> str:
    """The run folder's ``batches/`` (a local path or a URL)."""
    return storage.join(run_dir, BATCHES)


def removed_part(run_dir: str | os.PathLike, stage: str, index: int) -> str:
    """Where dedup's ``keep_removed`` writes partition ``index``'s removed records (its folder made)."""
    folder = storage.join(run_dir, REMOVED, stage)
    storage.makedirs(folder)
    return storage.join(folder, f"{part_name(index)}.jsonl")


def atomic_write(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Write ``path`` (a local path or a URL) whole or not at all; ``fill`` writes a local temporary file.

    Local temporaries are named ``.<name>.<pid>.<random>.tmp`` beside the target, which the next
    attempt cleans up if a crash or a full disk leaves one behind (see :func:`storage.atomic_write`).
    """
    storage.atomic_write(str(path), fill)


def atomic_write_json(path: str | Path, data: Any) -> None:
    text = redact(json.dumps(data, indent=1, default=str))  # no key's value, whatever brought it (a template)
    def fill(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, fill)


def _read_json(path: str | Path) -> Any:
    try:
        text = storage.read_text(str(path))
        return None if text is None else json.loads(text)
    except (OSError, ValueError):
        return None


def is_transient(error_class: str) -> bool:
    """Whether a record that failed with ``error_class`` may succeed on a rerun (5xx, timeouts, 429s...)."""
    from recipe import errors

    cls = errors.error_class(error_class)
    return cls is not None and cls.retryable


def commit_partition(directory: str, index: int, good_file: str | None, error_file: str | None,
                     manifest: dict) -> None:
    """Make partition ``index`` consist of exactly these files, then mark it committed.

    Called by the write task after writing the new files (or with ``None`` where the partition
    has none): a leftover from an earlier attempt, good or error, is removed so that no
    ``errors/part-N`` survives beside a new ``part-N``; the manifest is written last.
    """
    name = part_name(index)
    for path in storage.listdir(directory, f"{name}.*"):
        if storage.name(path) != good_file:
            storage.remove(path)
    if error_file is None:
        storage.remove(storage.join(directory, ERRORS, f"{name}.jsonl"))
    storage.makedirs(storage.join(directory, MANIFESTS))
    atomic_write_json(storage.join(directory, MANIFESTS, f"{name}.json"), manifest)


def count_records(path: str) -> int:
    """Records in a part file as the write stage writes them: a JSONL file's lines, a Parquet
    file's rows (read from its footer)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with storage.open_file(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    lines = 0
    last = b"\n"
    with storage.open_file(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def file_entries(directory: str, good_file: str | None, error_file: str | None) -> dict[str, int]:
    """The ``sizes`` a manifest records: each file it names, by its size in bytes once written."""
    return {f: storage.size(storage.join(directory, *f.split("/"))) for f in (good_file, error_file) if f}


def intact(directory: str, manifest: dict, sizes: dict[str, int]) -> str | None:
    """Why a committed partition's files do not hold what its manifest says (None: they do).

    Each file the manifest names must exist, with the manifest's count of records (``records``
    for the part file, ``errors`` for ``errors/``). A file of the size recorded at commit holds
    it; a file of another size (a Parquet part rewritten to the run's schema, a hand edit) is
    counted, so nothing is read for an untouched folder.
    """
    files = manifest.get("files")
    if not isinstance(files, list):
        return None  # nothing to check against
    recorded = manifest.get("sizes") or {}
    expected = {f: manifest.get("errors", 0) if f.startswith(f"{ERRORS}/") else manifest.get("records", 0)
                for f in files}
    if manifest.get("records", 0) and not any(not f.startswith(f"{ERRORS}/") for f in files):
        return "its manifest names no part file"
    for name, count in expected.items():
        if name not in sizes:
            return f"{name} is missing"
        if recorded.get(name) == sizes[name]:
            continue
        try:
            found = count_records(storage.join(directory, *name.split("/")))
        except (OSError, ValueError) as exc:  # a vanished file, a cut Parquet footer (ArrowInvalid)
            return f"{name} cannot be read ({type(exc).__name__})"
        if found != count:
            return f"{name} holds {found} records, its manifest says {count}"
    return None


def uncommit_partition(directory: str, index: int) -> None:
    """Called before a partition is written again: it is not done until its new manifest exists."""
    storage.remove(storage.join(directory, MANIFESTS, f"{part_name(index)}.json"))


class RunFolder:
    """One run's folder: its identity, its partition plan, its committed partitions and attempts."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.remote = storage.is_remote(path)
        self.root = str(path) if self.remote else storage.local_path(path)
        self.path = self.root if self.remote else Path(self.root)  # what messages name

    def _at(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # ---- identity --------------------------------------------------------------------------

    def info(self) -> dict | None:
        return _read_json(self._at(RUN_FILE))

    def check(self, config_hash: str) -> None:
        """Refuse a folder that holds another config's results (one line, exit 2 at the CLI)."""
        info = self.info()
        if info is not None:
            if info.get("config_hash") != config_hash:
                raise ConfigError(
                    f"output_dir {self.path} holds the results of a different config (run "
                    f"{info.get('config_hash')}, this config is {config_hash}): choose another output_dir, "
                    f"or leave output_dir unset to get a folder of its own")
            return
        if storage.listdir(self.root, "part-*") or storage.exists(self._at(STATS)):
            raise ConfigError(f"output_dir {self.path} holds results that no run of this config made: "
                              f"choose another output_dir, or leave output_dir unset to get a folder of its own")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held for the whole attempt: two copies of one command must not write one folder."""
        import fcntl

        if self.remote:  # object stores have no locks: one run per remote folder is the user's to keep
            yield
            return
        local = Path(self.root)
        local.mkdir(parents=True, exist_ok=True)
        handle = open(local / LOCK, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"run folder {self.path} is in use by another run of the same config: "
                              "wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def open(self, config_hash: str, ident: dict, resume: bool = True) -> bool:
        """Claim the folder for this config; ``resume=False`` clears its parts first.

        Returns whether earlier attempts exist (the run resumes).
        """
        self.check(config_hash)
        storage.makedirs(self.root)
        if not resume:
            self.clear()
        self.clean_temporaries()
        info = self.info()
        if info is None:
            atomic_write_json(self._at(RUN_FILE), {"format": FORMAT_VERSION, "config_hash": config_hash,
                                                      "identity": ident, "created": time.time(), "plan": None})
        return bool(self.attempt_files())

    def clear(self) -> None:
        """Remove this run's results and account (not its log or Hydra's config)."""
        for path in storage.listdir(self.root, "part-*"):
            storage.remove(path)
        for sub in (ERRORS, MANIFESTS, ATTEMPTS):
            storage.remove_tree(self._at(sub))
        for name in (RUN_FILE, STATS):
            storage.remove(self._at(name))

    def clean_temporaries(self) -> int:
        """Delete the ``.part-N.*.tmp`` (and other ``*.tmp``) files a crash or a full disk left
        (none on object stores: an object appears whole or not at all)."""
        if self.remote:
            return 0
        local = Path(self.root)
        stale = [*local.glob(".part-*.tmp"), *local.glob(f".{STATS}.*.tmp"), *local.glob(f".{RUN_FILE}.*.tmp")]
        for sub in (ERRORS, MANIFESTS, ATTEMPTS):
            stale += (local / sub).glob(".*.tmp")
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # ---- partitions ------------------------------------------------------------------------

    def plan(self) -> list | None:
        info = self.info() or {}
        return info.get("plan")

    def save_plan(self, plan: list) -> None:
        info = self.info() or {}
        info["plan"] = plan
        atomic_write_json(self._at(RUN_FILE), info)

    def manifests(self, config_hash: str | None = None) -> dict[int, dict]:
        """Committed partitions by number: a manifest of another config hash does not count, nor
        one whose files are gone or hold another number of records than it says (:func:`intact`)."""
        found: dict[int, dict] = {}
        for path in storage.listdir(self._at(MANIFESTS), "part-*.json"):
            manifest = _read_json(path)
            if not isinstance(manifest, dict) or "part" not in manifest:
                continue
            if config_hash is not None and manifest.get("config_hash") != config_hash:
                continue
            found[int(manifest["part"])] = manifest
        if not found:
            return found
        sizes = self.file_sizes({posixpath.dirname(f) for m in found.values() for f in m.get("files") or ()})
        for index, manifest in list(found.items()):
            problem = intact(self.root, manifest, sizes)
            if problem is not None:
                log.warning("%s: partition %d is not committed (%s): it is done again", self.path, index, problem)
                del found[index]
        return found

    def file_sizes(self, subdirs: set[str]) -> dict[str, int]:
        """Size of each file in the folder and in ``subdirs`` (``errors``, ``data``...), by its path
        relative to the folder: one listing per directory, also on object stores."""
        sizes: dict[str, int] = {}
        for sub in sorted(subdirs | {""}):
            for name, size in storage.sizes(self._at(sub) if sub else self.root).items():
                sizes[f"{sub}/{name}" if sub else name] = size
        return sizes

    def todo(self, n_partitions: int, config_hash: str, retry_failed: bool = True) -> tuple[list[int], dict]:
        """Partitions to (re)do, and the committed ones kept as they are.

        A committed partition holding records that failed for transient reasons is done again
        when ``retry_failed``: its answered requests come from the cache. So is one that a
        ``target.records`` run cut short: this run wants all its records (a target run redoes
        it as well, see :mod:`recipe.engine.target`), and they come from the cache too.
        """
        committed = self.manifests(config_hash)
        kept = {i: m for i, m in committed.items()
                if i < n_partitions and not (retry_failed and m.get("transient", 0))
                and m.get("trimmed_from") is None}
        return [i for i in range(n_partitions) if i not in kept], kept

    # ---- attempts and the account ----------------------------------------------------------

    def attempt_files(self) -> list[str]:
        return storage.listdir(self._at(ATTEMPTS), "attempt-*.json")

    def new_attempt(self) -> int:
        storage.makedirs(self._at(ATTEMPTS))
        numbers = [int(storage.name(p).split("-")[1].split(".")[0]) for p in self.attempt_files()]
        return max(numbers, default=0) + 1

    def save_attempt(self, number: int, data: dict) -> None:
        atomic_write_json(self._at(ATTEMPTS, f"attempt-{number:03d}.json"), {"attempt": number, **data})

    def read_attempts(self, clean: Callable[[dict], tuple[dict, list[str]]]) -> tuple[list[dict], list[str]]:
        """The attempts' accounts, each with what of its usage can be read, and what could not
        (``attempts/attempt-NNN.json``, or one of its counts): the summary says so instead of
        counting it as nothing, and sums the rest. ``clean`` splits a usage into its readable
        counts and the names of the bad ones (the owner of the counters knows which they are:
        ``recipe.clients.usage.readable``)."""
        readable, unreadable = [], []
        for path in self.attempt_files():
            name = f"{ATTEMPTS}/{storage.name(path)}"
            data = _read_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("usage", {}), dict):
                unreadable.append(name)
                continue
            usage, bad = clean(data.get("usage") or {})
            unreadable += [f"{name} ({key})" for key in bad]
            readable.append({**data, "usage": usage})
        return readable, unreadable

    def save_stats(self, stats: dict) -> None:
        atomic_write_json(self._at(STATS), stats)


def add_counts(into: dict, other: dict) -> None:
    """Add ``other``'s numbers into ``into``, recursively (dicts of counts of any depth)."""
    for key, value in other.items():
        if isinstance(value, dict):
            add_counts(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


def sum_manifests(manifests: dict[int, dict]) -> dict:
    """Records and failures of the committed partitions."""
    by_class: dict[str, int] = {}
    json_fields: set[str] = set()
    filtered = 0
    deduplicated: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for manifest in manifests.values():
        for name, count in (manifest.get("failures") or {}).items():
            by_class[name] = by_class.get(name, 0) + count
        json_fields.update(manifest.get("json_fields") or ())
        drops = manifest.get("dropped") or {}
        filtered += int(drops.get("filtered", 0))
        for stage, count in (drops.get("deduplicated") or {}).items():
            deduplicated[stage] = deduplicated.get(stage, 0) + count
        for stage, count in (drops.get("skipped") or {}).items():  # an LLM stage's `when` did not hold
            skipped[stage] = skipped.get(stage, 0) + count
    # dropped records, each counted once (None: a manifest written before they were counted there)
    counted = all("dropped" in m for m in manifests.values())
    return {"records": sum(m.get("records", 0) for m in manifests.values()),
            "filtered": filtered if counted else None,
            "deduplicated": deduplicated if counted else None, "skipped": skipped,
            "failed": sum(by_class.values()), "failed_by_class": by_class,
            "transient_failed": sum(m.get("transient", 0) for m in manifests.values()),
            "partitions": len(manifests), "json_fields": sorted(json_fields)}
