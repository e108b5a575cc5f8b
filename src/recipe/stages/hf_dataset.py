"""Results as a Hugging Face dataset: Parquet shards under ``data/``, a dataset card, a Hub push.

``WriteStage(format="hf")`` writes each partition's good records to
``data/train-NNNNN.parquet`` (error records still go to ``errors/``). When the run is over,
:func:`finish` makes the shards agree on one Arrow schema (a field missing from a partition,
or null in all of it, would otherwise make ``datasets`` refuse to cast the shards together),
writes ``README.md`` (YAML metadata: configs/data_files, features, size category; a body with
recipe, model, backend, sampling, counts, cost and the producing command) and, with
``hub.repo_id``, pushes ``data/`` and the card with ``huggingface_hub`` (token: ``HF_TOKEN``).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from recipe.errors import HubError

DATA_DIR = "data"
_SECRET_WORDS = ("key", "token", "secret", "password")
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def _column(values: list) -> Any:
    """One Arrow column; values Arrow cannot hold in one type (an int here, a dict there) become JSON text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
                        pa.string())


def records_table(records: list[dict]):
    """A table with every field of every record (``Table.from_pylist`` keeps the first row's only)."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    return pa.table({name: _column([r.get(name) for r in records]) for name in names})


def _atomic_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_shard(directory: Path, index: int, records: list[dict]) -> None:
    """``data/train-NNNNN.parquet`` for one partition, committed by an atomic rename."""
    data = Path(directory) / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(data / f"train-{index:05d}.parquet", records_table(records))


def _unify(shards: list[Path]):
    """One schema for every shard, rewriting the shards that differ; a column whose types cannot
    be reconciled (a string in one shard, a struct in another) becomes JSON text everywhere."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(s) for s in shards]
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
        as_text: set[str] = set()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        types: dict[str, set] = {}
        for schema in schemas:
            for f in schema:
                if not pa.types.is_null(f.type):
                    types.setdefault(f.name, set()).add(str(f.type))
        as_text = {name for name, found in types.items() if len(found) > 1}
        unified = None
    for shard, schema in zip(shards, schemas):
        if unified is not None and schema.equals(unified):
            continue
        table = pq.read_table(shard)
        for name in as_text & set(table.column_names):
            if not pa.types.is_string(table.schema.field(name).type):
                values = [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                          for v in table.column(name).to_pylist()]
                table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
        if unified is None:  # first pass: text columns converted; the unified schema comes next
            _atomic_parquet(shard, table)
            continue
        for f in unified:
            if f.name not in table.column_names:
                table = table.append_column(f.name, pa.nulls(len(table), f.type))
        _atomic_parquet(shard, table.select(unified.names).cast(unified))
    return _unify(shards) if unified is None else unified


def command_line() -> str | None:
    """The command that produced the run, with secret-looking overrides masked; None from Python."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    words = ["python", "-m", "recipe"]
    for override in HydraConfig.get().overrides.task:
        key, sep, _ = override.partition("=")
        secret = sep and any(w in key.lower() for w in _SECRET_WORDS)
        words.append(f"{key}=***" if secret else override)
    return shlex.join(words)


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>1B")


def card(directory: Path, schema, stats: dict, data: dict, command: str | None, num_bytes: int = 0) -> str:
    """The dataset card: YAML metadata that ``datasets`` and the Hub read, then a human body."""
    import datasets
    from huggingface_hub import DatasetCard, DatasetCardData

    records = stats.get("records", 0)
    features = datasets.Features.from_arrow_schema(schema)
    info = datasets.DatasetInfo(features=features)._to_yaml_dict()  # the library's own YAML form
    info["splits"] = [{"name": "train", "num_bytes": num_bytes, "num_examples": records}]
    recipe_name = (data.get("recipe") or {}).get("name", "?")
    meta = DatasetCardData(size_categories=[size_category(records)], tags=["synthetic", "recipe"],
                           configs=[{"config_name": "default",
                                     "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*.parquet"}]}],
                           dataset_info=info)
    backend, model = data.get("backend") or {}, data.get("model") or {}
    sampling = {k: v for k, v in (data.get("sampling") or {}).items() if v is not None}
    cost = stats.get("cost_usd")
    failed_by = ", ".join(f"{k}: {v}" for k, v in (stats.get("failed_by_class") or {}).items()) or "none"
    body = "\n".join([
        f"# {recipe_name}: synthetic data made with recipe", "",
        f"Generated by the `{recipe_name}` recipe of the `recipe` package with the model "
        f"`{model.get('name', '?')}` on the `{backend.get('provider', '?')}` backend.", "",
        "| | |", "|---|---|",
        f"| recipe | `{recipe_name}` |",
        f"| model | `{model.get('name', '?')}` |",
        f"| backend | `{backend.get('provider', '?')}` |",
        f"| sampling | `{json.dumps(sampling, sort_keys=True)}` |",
        f"| records | {records} |",
        f"| failed records (kept out of the dataset, in `errors/`) | {stats.get('failed', 0)} ({failed_by}) |",
        f"| filtered | {stats.get('filtered', 0)} |",
        f"| deduplicated | {json.dumps(stats.get('deduplicated') or {}, sort_keys=True)} |",
        f"| requests | {stats.get('requests', 0)} ({stats.get('cache_hits', 0)} from the cache) |",
        f"| tokens | {stats.get('prompt_tokens', 0)} prompt, {stats.get('completion_tokens', 0)} completion |",
        f"| cost | {'unknown (no price for this model)' if cost is None else f'${cost:.6f}'} |", "",
        "Produced by:", "", "```bash", command or "recipe.run(cfg)  # from Python", "```", "",
        "Load it with `datasets.load_dataset(\"<this directory or repo>\", split=\"train\")`.", ""])
    return str(DatasetCard(f"---\n{meta.to_yaml()}\n---\n\n{body}"))


def finish(directory: str | Path, stats: dict, data: dict, command: str | None = None) -> None:
    """After the run: one schema across shards, the dataset card, then the push if ``hub.repo_id``."""
    import pyarrow as pa

    directory = Path(directory)
    shards = sorted((directory / DATA_DIR).glob("train-*.parquet"))
    import pyarrow.parquet as pq

    schema = _unify(shards) if shards else pa.schema([])
    num_bytes = sum(pq.read_metadata(s).row_group(g).total_byte_size  # uncompressed, as datasets counts
                    for s in shards for g in range(pq.read_metadata(s).num_row_groups))
    (directory / "README.md").write_text(card(directory, schema, stats, data, command or command_line(), num_bytes),
                                         encoding="utf-8")
    hub = data.get("hub") or {}
    if hub.get("repo_id"):
        push(directory, hub["repo_id"], private=bool(hub.get("private")))


def push(directory: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``data/`` and the card to the Hub dataset ``repo_id`` (created if missing).

    The endpoint is ``HF_ENDPOINT`` (the Hub by default) and the token ``HF_TOKEN``, both read
    by ``huggingface_hub`` itself: the token never passes through our config or logs.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not at huggingface_hub's import
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="dataset",
                                 allow_patterns=[f"{DATA_DIR}/*.parquet", "README.md"],
                                 commit_message="Upload dataset made with recipe")
    except Exception as exc:  # huggingface_hub raises HTTP and validation errors of many classes
        raise HubError(f"push to the Hub dataset {repo_id!r} failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); the dataset is complete in "
                       f"{directory}") from None
    return str(getattr(info, "commit_url", info))
