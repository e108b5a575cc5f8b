"""Results as a Hugging Face dataset: Parquet shards under ``data/``, a dataset card, a Hub push.

``WriteStage(format="hf")`` writes each partition's good records to
``data/part-NNNNN.parquet`` (error records still go to ``errors/``, manifests to
``manifests/``). When the run is over, :func:`finish` makes the shards agree on one Arrow
schema (a field missing from a partition, or null in all of it, would otherwise make
``datasets`` refuse to cast the shards together), writes ``README.md`` (YAML metadata: configs/data_files, features, size category; a body with
recipe, model, backend, sampling, counts, cost and the producing command, with no key in it) and, with
``hub.repo_id``, pushes ``data/`` and the card with ``huggingface_hub`` (token: ``HF_TOKEN``).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import cast

from recipe import storage
from recipe.config.secrets import key_note, pasteable, redact
from recipe.errors import HubError

DATA_DIR = "data"
CARD = "README.md"
CARD_MARK = "<!-- dataset card written by recipe -->"  # a README.md without it is the user's: never overwritten
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def write_shard(directory: str | Path, index: int, records: list[dict]) -> tuple[str | None, list[str]]:
    """``data/part-NNNNN.parquet`` for one partition (every field kept, as the parquet format does);
    returns the file relative to ``directory`` (None when the partition has no good record, and a
    shard left by an earlier attempt is removed) and the fields stored as JSON text."""
    from recipe.storage.run_folder import part_name
    from recipe.stages.io.parquet import write_part

    data = storage.join(directory, DATA_DIR)
    name = f"{part_name(index)}.parquet"
    path = storage.join(data, name)
    if not records:
        storage.remove(path)
        return None, []
    storage.makedirs(data)
    return f"{DATA_DIR}/{name}", write_part(path, records)


def command_line(provider: str | None = None) -> str | None:
    """The command that produced the run, as a user may paste it (no key: a key override reads
    the key from the environment, see ``secrets.pasteable``); None from Python."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    from omegaconf import OmegaConf

    # as typed, not resolved (an ${oc.env:...} stays a reference); the overrides are a list
    typed = cast(list, OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))
    words, variables = pasteable([str(word) for word in typed], provider)
    note = key_note(variables)
    return shlex.join(["python", "-m", "recipe", *words]) + (f"\n# {note}" if note else "")


def check_folder(directory: str | Path, ours: bool) -> None:
    """Refuse a folder where writing the dataset would overwrite a file recipe did not write:
    a ``README.md`` that is not a card of ours, or ``data/`` shards when the folder holds no run
    of this config (``ours``). One line, before anything starts."""
    from recipe.errors import ConfigError

    card_path = storage.join(directory, CARD)
    if storage.isfile(card_path):
        try:
            head = storage.read_text(card_path) or ""
        except (OSError, UnicodeDecodeError):
            head = ""
        if CARD_MARK not in head and not (ours and ": synthetic data made with recipe" in head):  # (older cards)
            raise ConfigError(f"output_dir {directory} holds a {CARD} that recipe did not write, and a format=hf "
                              f"dataset writes its card there: choose another output_dir (or leave it unset)")
    if not ours and storage.listdir(storage.join(directory, DATA_DIR), "part-*.parquet"):
        raise ConfigError(f"output_dir {directory} holds {DATA_DIR}/ shards that no run of this config made: "
                          "choose another output_dir (or leave it unset)")


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>1B")


def card(directory: str | Path, schema, stats: dict, data: dict, command: str | None, num_bytes: int = 0) -> str:
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
                                     "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}],
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
        f"| made with | `recipe` {stats.get('recipe_version') or '(version unknown)'} |",
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
        CARD_MARK, "",
        "Load it with `datasets.load_dataset(\"<this directory or repo>\", split=\"train\")`.", ""])
    return str(DatasetCard(f"---\n{meta.to_yaml()}\n---\n\n{body}"))


def finish(directory: str | Path, stats: dict, data: dict, command: str | None = None) -> None:
    """After the run: one schema across shards, the dataset card, then the push if ``hub.repo_id``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recipe.stages.io.parquet import unify_parts

    data_dir = storage.join(directory, DATA_DIR)
    unify_parts(data_dir)  # one schema across shards, or datasets refuses to cast them together
    schema, num_bytes = pa.schema([]), 0
    for i, shard in enumerate(storage.listdir(data_dir, "part-*.parquet")):
        with storage.open_file(shard, "rb") as handle:
            metadata = pq.read_metadata(handle)
        if i == 0:
            schema = metadata.schema.to_arrow_schema().remove_metadata()
        # uncompressed, as datasets counts
        num_bytes += sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    command = command or command_line((data.get("backend") or {}).get("provider"))
    text = redact(card(directory, schema, stats, data, command, num_bytes))  # no key's value, whatever brought it
    storage.atomic_write_bytes(storage.join(directory, CARD), text.encode("utf-8"))
    hub = data.get("hub") or {}
    if hub.get("repo_id"):
        push(directory, hub["repo_id"], private=bool(hub.get("private")))


def _upload_source(path: str) -> str | bytes:
    """What ``huggingface_hub`` uploads for ``path``: a local file by its path (streamed from disk,
    however large the shard), a bucket's object as its bytes (the library takes no fsspec file)."""
    if not storage.is_remote(path):
        return storage.local_path(path)
    with storage.open_file(path, "rb") as handle:
        return handle.read()


def push(directory: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``data/`` and the card to the Hub dataset ``repo_id`` (created if missing), from a
    local folder or a bucket alike (each file read through storage, one commit).

    The endpoint is ``HF_ENDPOINT`` (the Hub by default) and the token ``HF_TOKEN``, both read
    by ``huggingface_hub`` itself: the token never passes through our config or logs.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not at huggingface_hub's import
    files = [(f"{DATA_DIR}/{storage.name(shard)}", shard)
             for shard in storage.listdir(storage.join(directory, DATA_DIR), "part-*.parquet")]
    files.append((CARD, storage.join(directory, CARD)))
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=_upload_source(source))
                      for in_repo, source in files]
        info = api.create_commit(repo_id, operations, repo_type="dataset",
                                 commit_message="Upload dataset made with recipe")
    except Exception as exc:  # huggingface_hub raises HTTP and validation errors of many classes
        raise HubError(f"push to the Hub dataset {repo_id!r} failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); the dataset is complete in "
                       f"{directory}") from None
    return str(getattr(info, "commit_url", info))
