"""A run folder as the report reads it: its account files, what is missing or unreadable, and
its records and error records streamed part by part (local paths and fsspec URLs alike).

The report never trusts a file to be there or whole: a missing or corrupt ``stats.json``,
manifest or attempt becomes a line in :attr:`RunFiles.problems`, and the page says so. Only a
folder with none of a run's files at all is refused (:class:`NotARunFolder`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from recipe.storage.run_folder import ATTEMPTS, ERRORS, MANIFESTS, RUN_FILE, STATS
from recipe import storage

REPORT = "report.html"


class NotARunFolder(Exception):
    """``DIR`` holds none of a run folder's files."""


@dataclass
class RunFiles:
    """What was found in a run folder; ``problems`` says what is missing or unreadable."""

    root: str
    stats: dict | None = None
    info: dict | None = None
    manifests: dict[int, dict] = field(default_factory=dict)
    attempts: list[dict] = field(default_factory=list)
    config_text: str | None = None  # Hydra's saved config (.hydra/config.yaml), if any
    command: list[str] | None = None  # Hydra's saved overrides, if any
    part_files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _json(path: str, what: str, problems: list[str], required: bool = True) -> Any:
    try:
        text = storage.read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{what} ({storage.name(path)}) cannot be read: {exc}")
        return None
    if text is None:
        if required:
            problems.append(f"{what} ({storage.name(path)}) is missing")
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        problems.append(f"{what} ({storage.name(path)}) is corrupt: {exc}")
        return None


def read_run(root: str) -> RunFiles:
    """The run folder ``root``'s files; raises :class:`NotARunFolder` when it is none."""
    found = RunFiles(root=root)
    problems = found.problems
    try:
        is_dir = storage.exists(root) and not storage.isfile(root)
    except OSError:
        is_dir = False
    if not is_dir:
        raise NotARunFolder(f"{root} is not a folder")
    top = {storage.name(p) for p in storage.listdir(root, "*")}
    parts = storage.listdir(root, "part-*")
    manifest_files = storage.listdir(storage.join(root, MANIFESTS), "part-*.json")
    attempt_files = storage.listdir(storage.join(root, ATTEMPTS), "attempt-*.json")
    if not ({RUN_FILE, STATS} & top or parts or manifest_files or attempt_files):
        raise NotARunFolder(f"{root} is not a run folder (no {RUN_FILE}, {STATS}, manifests/ or part files)")
    found.info = _json(storage.join(root, RUN_FILE), "the run's identity", problems)
    stats = _json(storage.join(root, STATS), "the run's account", problems)
    if stats is not None and not isinstance(stats, dict):
        problems.append(f"the run's account ({STATS}) is not a JSON object")
        stats = None
    found.stats = stats
    for path in manifest_files:
        manifest = _json(path, "a partition's manifest", problems)
        if isinstance(manifest, dict) and isinstance(manifest.get("part"), int):
            found.manifests[manifest["part"]] = manifest
        elif manifest is not None:
            problems.append(f"a partition's manifest ({storage.name(path)}) has no part number")
    if not manifest_files:
        problems.append(f"no partition manifests ({MANIFESTS}/): the run committed no partition, "
                        "or they were removed")
    for path in attempt_files:
        attempt = _json(path, "an attempt's account", problems)
        if isinstance(attempt, dict):
            found.attempts.append(attempt)
    found.config_text = _text(storage.join(root, ".hydra", "config.yaml"))
    overrides = _text(storage.join(root, ".hydra", "overrides.yaml"))
    if overrides is not None:
        import yaml

        try:
            loaded = yaml.safe_load(overrides)
            found.command = [str(x) for x in loaded] if isinstance(loaded, list) else None
        except yaml.YAMLError:
            problems.append("the command's overrides (.hydra/overrides.yaml) are corrupt")
    found.part_files = _good_files(root, found.manifests, parts)
    found.error_files = storage.listdir(storage.join(root, ERRORS), "part-*.jsonl")
    return found


def _text(path: str) -> str | None:
    try:
        return storage.read_text(path)
    except (OSError, UnicodeDecodeError):
        return None


def _good_files(root: str, manifests: dict[int, dict], parts: list[str]) -> list[str]:
    """The committed parts' record files in part order; every part file when no manifest names one."""
    named = [name for _, m in sorted(manifests.items()) for name in (m.get("files") or [])
             if isinstance(name, str) and not name.startswith(f"{ERRORS}/")]
    if named:
        return [storage.join(root, *name.split("/")) for name in named]
    return [p for p in parts if p.endswith((".jsonl", ".parquet"))]


# ---- records ---------------------------------------------------------------------------------

ARROW_BLOCK = 1 << 26  # a JSONL part whose longest line is longer than this is read line by line


def parts(files: list[str], problems: list[str]) -> Iterator[Any]:
    """Each part as a pyarrow Table where Arrow reads it whole (fast, columnar), else as a list of
    records read line by line (a part whose fields change type, or holds a line longer than
    :data:`ARROW_BLOCK`). Parquet's JSON-text fields come as lists of records too."""
    for path in files:
        table = _arrow(path)
        if table is not None:
            yield table
        else:
            yield list(records([path], problems))


def _arrow(path: str) -> Any:
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            from recipe.stages.io.parquet import JSON_FIELDS_KEY

            with storage.open_file(path, "rb") as handle:
                table = pq.read_table(handle)
            if (table.schema.metadata or {}).get(JSON_FIELDS_KEY, b"[]") not in (b"[]", b""):
                return None
            return table
        import pyarrow.json as pj

        with storage.open_file(path, "rb") as handle:
            data = handle.read()
        if not data.strip():
            return None
        block = max(1 << 20, min(len(data) + 1, ARROW_BLOCK))
        import pyarrow as pa

        return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=block))
    except Exception:  # noqa: BLE001 - anything Arrow cannot take is read record by record
        return None


def records(files: list[str], problems: list[str]) -> Iterator[dict]:
    """Every record of ``files`` in order (JSONL or Parquet); an unreadable line or file is a problem, skipped."""
    for path in files:
        try:
            if path.endswith(".parquet"):
                yield from _parquet(path)
            else:
                yield from _jsonl(path, problems)
        except FileNotFoundError:
            problems.append(f"{storage.name(path)} is named by its manifest but missing")
        except OSError as exc:
            problems.append(f"{storage.name(path)} cannot be read: {exc}")
        except Exception as exc:  # noqa: BLE001 - a corrupt Parquet file: said, not raised
            problems.append(f"{storage.name(path)} cannot be read: {type(exc).__name__}: {exc}")


def _jsonl(path: str, problems: list[str]) -> Iterator[dict]:
    bad = 0
    with storage.open_file(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                bad += 1
                continue
            if isinstance(value, dict):
                yield value
            else:
                bad += 1
    if bad:
        problems.append(f"{storage.name(path)}: {bad} lines are not JSON records (skipped)")


def _parquet(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    from recipe.stages.io.parquet import JSON_FIELDS_KEY

    with storage.open_file(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        raw = (parquet.schema_arrow.metadata or {}).get(JSON_FIELDS_KEY)
        as_json = json.loads(raw) if raw else []  # fields stored as JSON text: their values again
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                for name in as_json:
                    if isinstance(row.get(name), str):
                        try:
                            row[name] = json.loads(row[name])
                        except ValueError:
                            pass
                yield row
