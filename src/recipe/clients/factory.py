"""From a composed config to what a run uses: the picklable :class:`ClientSpec`, clients, stages.

A Dask graph carries the spec, never a client: a client holds open connections. Each
process builds one client per spec, lazily, and reuses it for every partition. Stages are
built from ``recipe.stages`` in one place (:func:`build_stages`), which the config's
validation also uses, so that a bad parameter is found the same way before a run and in it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

from recipe.config import defaults
from recipe.config.concurrency import parse_max_concurrency
from recipe.config.env_keys import EnvKey, resolve_key, resolved_by_reference
from recipe.config.secrets import remember
from recipe.config.targets import allowed_class
from recipe.errors import ConfigError
from recipe.process_state import per_run


@dataclass(frozen=True)
class ClientSpec:
    """Everything needed to build a client and query the model; the key is kept out of repr."""

    provider: str
    model: str
    api_base: "str | tuple[str, ...] | None" = None  # a tuple: replicas of one model (clients/replicas.py)
    # A key by reference (an EnvKey: the variable's name) unless backend.ship_key=true: this spec
    # travels in task graphs, and each process resolves the key from its own environment.
    api_key: "str | EnvKey | None" = field(default=None, repr=False)
    timeout: float = defaults.TIMEOUT
    num_retries: int = defaults.NUM_RETRIES
    max_concurrency: int = defaults.MAX_CONCURRENCY  # the fixed limit, or the ceiling of an adaptive one
    adaptive_concurrency: bool = False  # backend.max_concurrency: auto (recipe.clients.adaptive)
    rpm: float | None = None
    tpm: float | None = None
    context_length: int | None = None
    formatter: tuple = ()  # (("_target_", ...), ("chat_template", ...)) - hashable
    sampling: tuple = ()  # (("temperature", 0.7), ...)
    cache_dir: str | None = None
    cache_url: str | None = None  # redis://host:port/db: one cache for the cluster, instead of cache_dir
    cache_max_gb: float | None = None  # the cache's bound (least recently used out); None: unbounded
    cluster_limits: bool = True  # coordinate limits through the Dask scheduler when there is one
    endpoint_id: str | None = None  # names the endpoint in cache keys when api_base is not stable
    budget: Any = None  # a recipe.clients.budget.BudgetSpec, set by the runner for budget.* runs
    batch: bool = False  # backend.batch: through the provider's batch API (recipe.clients.batch)
    batch_dir: str | None = None  # where batch ids are recorded: the run folder's batches/, set by the runner
    batch_poll_seconds: float = defaults.BATCH_POLL_SECONDS
    structured_output: str | None = None  # the schema dialect (clients/structured_output.py); None: the provider's
    on_truncated: str = "error"  # keep | error | retry: answers cut at max_tokens
    extra_body: str | None = None  # backend.extra_body as canonical JSON (hashable), merged into each request
    # backend.fallbacks: FallbackSpec per model that answers what this one cannot (clients/fallbacks.py)
    fallbacks: tuple = ()

    @classmethod
    def from_config(cls, cfg: Any) -> "ClientSpec":
        """Build from a composed config (DictConfig or plain dict); ``${oc.env:...}`` keys stay references
        (:class:`EnvKey`) unless ``backend.ship_key`` is true."""
        data = resolved_by_reference(cfg)
        backend, model = data["backend"], data["model"]
        formatter = {k: v for k, v in (data.get("formatter") or {}).items() if v is not None}
        if not formatter.get("_target_"):
            formatter = {}
        cache = data.get("cache") or {}
        ceiling, adaptive = parse_max_concurrency(backend.get("max_concurrency", defaults.MAX_CONCURRENCY))
        api_base = backend.get("api_base")
        if isinstance(api_base, (list, tuple)):
            api_base = tuple(api_base)  # even one: a list names the set, not its members (identity, cache)
        return cls(
            provider=backend["provider"], model=model["name"], api_base=api_base,
            api_key=backend.get("api_key"), timeout=float(backend.get("timeout", defaults.TIMEOUT)),
            num_retries=int(backend.get("num_retries", defaults.NUM_RETRIES)),
            max_concurrency=ceiling, adaptive_concurrency=adaptive,
            rpm=backend.get("rpm"), tpm=backend.get("tpm"), context_length=model.get("context_length"),
            formatter=tuple(sorted(formatter.items())),
            sampling=tuple(sorted((data.get("sampling") or {}).items(), key=lambda kv: kv[0])),
            cache_dir=cache.get("dir") if cache.get("enabled", True) else None,
            batch=bool(backend.get("batch", False)), batch_poll_seconds=float(backend.get("batch_poll_seconds", defaults.BATCH_POLL_SECONDS)),
            cache_url=cache.get("url") if cache.get("enabled", True) else None,
            cache_max_gb=cache.get("max_gb"),
            structured_output=backend.get("structured_output"),
            on_truncated=str(backend.get("on_truncated") or "error"),
            extra_body=json.dumps(backend["extra_body"], sort_keys=True) if backend.get("extra_body") else None,
            fallbacks=_fallbacks(backend),
        )

    @property
    def endpoints(self) -> int:
        """How many endpoints share the requests: the replicas of ``api_base``, each with its own limit."""
        return len(self.api_base) if isinstance(self.api_base, tuple) else 1

    def with_overrides(self, **changes: Any) -> "ClientSpec":
        """This spec with ``changes`` (a stage's ``backend:`` keys, as a config spells them)."""
        if "max_concurrency" in changes:  # N, auto or auto:N (a stage's backend override)
            changes["max_concurrency"], changes["adaptive_concurrency"] = parse_max_concurrency(changes["max_concurrency"])
        if isinstance(changes.get("api_base"), list):
            changes["api_base"] = tuple(changes["api_base"])
        if changes.get("provider", self.provider) != self.provider:
            changes.setdefault("structured_output", None)  # another provider speaks its own dialect
        if isinstance(changes.get("fallbacks"), list):  # a stage's own: defaults from its backend
            changes["fallbacks"] = _fallbacks({"provider": changes.get("provider", self.provider),
                                               "api_base": changes.get("api_base", self.api_base),
                                               "api_key": changes.get("api_key", self.api_key),
                                               "fallbacks": changes["fallbacks"]})
        return replace(self, **changes)

    @property
    def chain(self) -> "tuple[ClientSpec, ...]":
        """This spec without its fallbacks, then one spec per fallback model: the same sampling,
        limits, cache, budget and batch settings, another model and endpoint."""
        head = replace(self, fallbacks=())
        return (head, *(head.with_overrides(model=f.model, provider=f.provider, api_base=f.api_base,
                                            api_key=f.api_key, context_length=f.context_length, endpoint_id=None)
                        for f in self.fallbacks))

    @property
    def sampling_params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.sampling}

    @cached_property
    def conversation_formatter(self):
        if not self.formatter:
            return None
        from hydra.utils import instantiate

        from recipe.clients.conversation_formatter import ConversationFormatter

        allowed_class(dict(self.formatter).get("_target_"), ConversationFormatter, "formatter._target_")
        try:
            return instantiate(dict(self.formatter))
        except Exception as exc:
            raise ConfigError(f"formatter {dict(self.formatter).get('_target_')}: {exc}") from None

    @property
    def constrains_output(self) -> bool:
        """Whether this backend, on this route (chat, or a formatter's raw text), constrains
        decoding to a schema; the answer is in the one table of structured_output."""
        from recipe.clients import structured_output

        return structured_output.supports(structured_output.dialect_for(self.provider, self.structured_output),
                                          text=bool(self.formatter))

    def __dask_tokenize__(self) -> tuple:
        data = asdict(self)
        data.pop("api_key")
        data["fallbacks"] = [{k: v for k, v in f.items() if k != "api_key"} for f in data["fallbacks"]]
        return ("ClientSpec", sorted(data.items(), key=lambda kv: kv[0]))

    def client_kwargs(self) -> dict:
        """The client's arguments, the key resolved here (in the process that builds the client).

        The key is remembered as a secret of this process: whatever this process writes (an
        error record, a message) is redacted of it."""
        key = resolve_key(self.api_key)
        remember(key)
        return {"provider": self.provider, "api_base": self.api_base, "api_key": key,
                "timeout": self.timeout, "num_retries": self.num_retries,
                "max_concurrency": self.max_concurrency, "adaptive_concurrency": self.adaptive_concurrency, "rpm": self.rpm, "tpm": self.tpm,
                "endpoint_id": self.endpoint_id, "structured_output": self.structured_output,
                "on_truncated": self.on_truncated,
                "extra_body": json.loads(self.extra_body) if self.extra_body else None}


def build_client(cfg: Any, asynchronous: bool = False):
    """A ``LiteLLMClient`` (or ``AsyncLiteLLMClient``) from a composed config or a :class:`ClientSpec`.

    The model name is not bound: pass ``model=cfg.model.name`` per call, as the interface says.
    """
    from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient

    spec = cfg if isinstance(cfg, ClientSpec) else ClientSpec.from_config(cfg)
    cls = AsyncLiteLLMClient if asynchronous else LiteLLMClient
    return cls(**spec.client_kwargs(), cache=open_cache(spec))


def open_cache(spec: ClientSpec):
    """The spec's request cache: Redis for ``cache_url``, else SQLite in ``cache_dir``, else none."""
    if spec.cache_url:
        from recipe.cache.redis import RedisCache

        return RedisCache(spec.cache_url)
    if not spec.cache_dir:
        return None
    from recipe.cache.sqlite import RequestCache

    max_bytes = int(spec.cache_max_gb * 1e9) if spec.cache_max_gb else None
    return RequestCache(spec.cache_dir, max_bytes=max_bytes)


_clients: dict = {}
_clients_lock = threading.Lock()


def shared_async_client(spec: ClientSpec):
    """This process's one async client for ``spec`` (built on first use, with the run's limiter)."""
    # The token leaves the key out (it names graphs); two keys must still mean two clients.
    key = (repr(spec.__dask_tokenize__()), spec.api_key, tuple(f.api_key for f in spec.fallbacks))
    if spec.fallbacks:
        return _chain_client(spec, key)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                from recipe.clients.budget import budget_for
                from recipe.clients.cluster_limits import _current_worker, limiter_for
                from recipe.clients.litellm_client import AsyncLiteLLMClient

                stats = process_stats()
                worker = _current_worker() if spec.cluster_limits and spec.budget is not None else None
                client = AsyncLiteLLMClient(**spec.client_kwargs(), cache=open_cache(spec), stats=stats,
                                            limiter=limiter_for(spec, stats), budget=budget_for(spec.budget, worker))
                if spec.batch:
                    from pathlib import Path

                    from recipe.clients.batch import BatchCollector

                    where = spec.batch_dir or str(Path(spec.cache_dir or ".") / "batches")
                    client.batcher = BatchCollector(client, where, poll_seconds=spec.batch_poll_seconds)
                _clients[key] = client
    return client


def _chain_client(spec: ClientSpec, key: tuple):
    """This process's one fallback chain for ``spec``: each model's own shared client, down the chain."""
    client = _clients.get(key)
    if client is None:
        from recipe.clients.fallbacks import FallbackClient, Link

        links = [Link(s.model, shared_async_client(s), s.context_length) for s in spec.chain]
        with _clients_lock:
            client = _clients.setdefault(key, FallbackClient(links))
    return client


def _fallbacks(backend: dict) -> tuple:
    """The ``FallbackSpec`` of each ``backend.fallbacks`` entry (recipe.config.fallbacks fills the defaults)."""
    if not backend.get("fallbacks"):
        return ()
    from recipe.clients.fallbacks import FallbackSpec
    from recipe.config.fallbacks import entries

    return tuple(FallbackSpec(**entry) for entry in entries(backend))


def current_limits() -> dict:
    """The concurrency limits this process's clients hold now, per endpoint (each replica by its
    URL): ``{"limit": n, "cluster": bool}``; ``cluster``: the Dask scheduler's one limit (the same
    in every worker), else this process's own (summed over processes by the reader)."""
    found: dict = {}
    for client in list(_clients.values()):
        limiter = getattr(client, "limiter", None)
        replicas = getattr(limiter, "replicas", None)
        if replicas is not None:
            for replica in replicas:
                found[replica.url] = {"limit": replica.limiter.concurrency, "cluster": hasattr(replica.limiter, "worker")}
        elif limiter is not None and hasattr(limiter, "concurrency"):
            found[client.endpoint_name] = {"limit": limiter.concurrency, "cluster": hasattr(limiter, "worker")}
    return found


_stats = None


@per_run
def _reset_process_stats() -> None:
    """A new run counts from zero."""
    if _stats is not None:
        _stats.reset()


def process_stats():
    """One usage counter per process, shared by every client the run builds there."""
    global _stats
    if _stats is None:
        from recipe.clients.usage import UsageStats

        _stats = UsageStats()
    return _stats


@per_run
def forget_clients() -> None:
    """Drop this process's clients (between runs in one process, e.g. tests), stopping what
    they run in the background (a cluster limiter's refresh task)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:  # (a fallback chain has no limiter of its own: its models' clients are listed too)
        close = getattr(getattr(client, "limiter", None), "close", None)
        if close is not None:
            close()
