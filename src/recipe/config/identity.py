"""Which run a composed config is: the recipe name plus a short hash of what decides its results.

Running the same command again must continue the same run, so the run folder is named after
the config, not the clock. The hash covers the model, the endpoint, sampling, the formatter,
the recipe (every stage and template), each input file's path, size and modification time, and
``provenance: true`` (its records carry another field; a run without it keeps the hash it had).
It leaves out what only changes how fast or where a run goes (timeouts, retries, concurrency,
rpm/tpm, Dask sizing, the cache, progress, ``output_dir``, ``resume``) and every API key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from recipe.config.secrets import is_secret_name, without_secrets

HASH_LENGTH = 12
# backend keys that decide where requests go; the rest (timeouts, limits, the key) do not change answers
_ENDPOINT_KEYS = ("provider", "api_base")


def _strip_secrets(node: Any) -> None:
    """Delete every key named like a secret (``is_secret_name``) in a config tree, so a key is
    never resolved, hashed or stored."""
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            if is_secret_name(key):
                del node[key]
            else:
                _strip_secrets(node._get_node(key))
    elif OmegaConf.is_list(node):
        for item in node:
            _strip_secrets(item)


def _as_config(cfg: Any) -> Any:
    """A copy without secrets, ``hydra`` or ``output_dir``: a writable DictConfig (structured nodes
    refuse deletions, interpolations left unresolved), or a plain dict for a resolved config."""
    resolved = not OmegaConf.is_config(cfg)
    # a run's config is a mapping: to_container gives a dict for it
    plain = copy.deepcopy(dict(cfg)) if resolved else cast(dict, OmegaConf.to_container(cfg, resolve=False))
    for section in ("hydra", "output_dir"):  # never part of a run's identity (hydra.run.dir points here)
        plain.pop(section, None)
    if resolved:  # already resolved (the runner's plan): secrets out, nothing else to do
        return without_secrets(plain)
    config = OmegaConf.create(plain)
    _strip_secrets(config)
    return config


def _section(config: Any, key: str) -> Any:
    node = config.get(key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _read_paths(recipe: dict) -> list[str]:
    """The input files the recipe's read stages name (globs and lists expanded)."""
    from recipe.errors import ConfigError
    from recipe.storage import resolve_paths

    found: list[str] = []
    for stage in (recipe.get("stages") or {}).values():
        if isinstance(stage, dict) and str(stage.get("_target_", "")).endswith("ReadStage") and stage.get("path"):
            try:
                found += resolve_paths(stage["path"])
            except ConfigError:  # a missing file: the read stage refuses it with one line, before any work
                continue
    return found


def _sampled_files(node: Any) -> list[str]:
    """The files a ``dataset`` sampler draws rows from, anywhere in the recipe (a folder: its
    files): a changed file draws other records, so it is a new run, as a changed input file is."""
    import os

    found: list[str] = []
    if isinstance(node, dict):
        path = node.get("path")
        if node.get("sampler") == "dataset" and isinstance(path, str):
            path = os.path.expanduser(path)
            if os.path.isdir(path):
                found += sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                                if not name.startswith("."))
            elif os.path.isfile(path):
                found.append(path)
        for value in node.values():
            found += _sampled_files(value)
    elif isinstance(node, list):
        for value in node:
            found += _sampled_files(value)
    return found


def fingerprint(path: str) -> dict:
    """A file's identity: absolute path, size and modification time (a changed file is a new run)."""
    from recipe import storage

    return storage.fingerprint(path)


def identity(cfg: Any) -> dict:
    """The parts of ``cfg`` that decide a run's results, resolved, without any secret.

    ``cfg`` is a composed config or the same config already resolved (the same identity)."""
    config = _as_config(cfg)
    backend = _section(config, "backend") or {}
    if backend.get("api_base") or not backend.get("start_local_server"):
        endpoint = {k: backend.get(k) for k in _ENDPOINT_KEYS}
        if isinstance(endpoint["api_base"], (list, tuple)):
            endpoint["api_base"] = "replicas"  # one model's replicas: adding or removing one continues the run
    else:  # the embedded llama.cpp server: its port changes every run, its model and context do not
        # (its context is the model's context_length, below)
        endpoint = {"provider": backend.get("provider"), "local_model": backend.get("model_path")}
    model = _section(config, "model") or {}
    recipe = _section(config, "recipe") or {}
    from recipe import storage

    given = config.get("input") or []
    many = OmegaConf.is_list(given) or isinstance(given, (list, tuple))  # a list of paths or globs
    inputs = sorted({p for p in _read_paths(recipe) + _sampled_files(recipe) + (list(given) if many else [given])
                     if isinstance(p, str) and storage.isfile(p)})
    ident = {
        "model": {"name": model.get("name"), "context_length": model.get("context_length")},
        "endpoint": endpoint,
        "sampling": _section(config, "sampling"),
        "formatter": _section(config, "formatter"),
        "recipe": recipe,
        "inputs": [fingerprint(p) for p in inputs],
    }
    if _section(config, "provenance"):  # other records (a _provenance field): another run; off keeps old hashes
        ident["provenance"] = True
    if backend.get("fallbacks"):  # other models answer some records: other results (no key, no price)
        ident["fallbacks"] = [{k: v for k, v in dict(entry).items() if k not in ("api_key", "price")}
                              for entry in backend["fallbacks"] if hasattr(entry, "items")]
    return ident


def config_hash(ident: dict) -> str:
    text = json.dumps(ident, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def run_name(cfg: Any, ident: dict | None = None) -> str:
    """``<recipe name>-<hash>``, e.g. ``generate-3f9a1c0b2d4e``."""
    ident = ident if ident is not None else identity(cfg)
    name = str((ident["recipe"] or {}).get("name") or "run")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return f"{safe}-{config_hash(ident)}"


def runs_root() -> str:
    """Where run folders go when ``output_dir`` is not set (``RECIPE_RUNS_DIR``, else ``outputs``)."""
    return os.environ.get("RECIPE_RUNS_DIR") or "outputs"


def run_dir(cfg: Any, root: str | None = None) -> str:
    """The run folder of ``cfg``: its ``output_dir`` if set, else ``<root>/<recipe>-<hash>``."""
    given = cfg.get("output_dir") if hasattr(cfg, "get") else None
    if given:
        return str(given)
    return str(Path(root or runs_root()) / run_name(cfg))


def _resolver(root: str, *, _root_: Any) -> str:
    """``${recipe_run_dir:ROOT}``: Hydra's run dir (and each sweep job's) is the run folder.

    When ``output_dir`` is remote (``s3://...``) the results go there, and Hydra's run dir (its
    ``.hydra/`` and the log) stays local: ``<ROOT>/<recipe>-<hash>``.
    """
    from recipe import storage

    folder = run_dir(_root_, root)
    if storage.is_remote(folder):
        folder = str(Path(root or runs_root()) / run_name(_root_))
    return os.path.abspath(folder)


def register_resolver() -> None:
    OmegaConf.register_new_resolver("recipe_run_dir", _resolver, replace=True)
