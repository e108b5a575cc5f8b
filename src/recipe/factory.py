"""From a composed config to what a run uses: the picklable :class:`ClientSpec`, clients, stages.

A Dask graph carries the spec, never a client: a client holds open connections. Each
process builds one client per spec, lazily, and reuses it for every partition. Stages are
built from ``recipe.stages`` in one place (:func:`build_stages`), which the config's
validation also uses, so that a bad parameter is found the same way before a run and in it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import cached_property
from typing import Any

from recipe.config import defaults
from recipe.config.env_keys import EnvKey, resolve_key, resolved_by_reference
from recipe.config.secrets import remember
from recipe.errors import ConfigError, refuse


@dataclass(frozen=True)
class ClientSpec:
    """Everything needed to build a client and query the model; the key is kept out of repr."""

    provider: str
    model: str
    api_base: str | None = None
    # A key by reference (an EnvKey: the variable's name) unless backend.ship_key=true: this spec
    # travels in task graphs, and each process resolves the key from its own environment.
    api_key: "str | EnvKey | None" = field(default=None, repr=False)
    timeout: float = defaults.TIMEOUT
    num_retries: int = defaults.NUM_RETRIES
    max_concurrency: int = defaults.MAX_CONCURRENCY
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
    budget: Any = None  # a recipe.services.budget.BudgetSpec, set by the runner for budget.* runs
    batch: bool = False  # backend.batch: through the provider's batch API (recipe.services.batch)
    batch_dir: str | None = None  # where batch ids are recorded: the run folder's batches/, set by the runner
    batch_poll_seconds: float = defaults.BATCH_POLL_SECONDS
    structured_output: str | None = None  # the schema dialect (services/structured_output.py); None: the provider's
    on_truncated: str = "error"  # keep | error | retry: answers cut at max_tokens

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
        return cls(
            provider=backend["provider"], model=model["name"], api_base=backend.get("api_base"),
            api_key=backend.get("api_key"), timeout=float(backend.get("timeout", defaults.TIMEOUT)),
            num_retries=int(backend.get("num_retries", defaults.NUM_RETRIES)),
            max_concurrency=int(backend.get("max_concurrency", defaults.MAX_CONCURRENCY)),
            rpm=backend.get("rpm"), tpm=backend.get("tpm"), context_length=model.get("context_length"),
            formatter=tuple(sorted(formatter.items())),
            sampling=tuple(sorted((data.get("sampling") or {}).items(), key=lambda kv: kv[0])),
            cache_dir=cache.get("dir") if cache.get("enabled", True) else None,
            batch=bool(backend.get("batch", False)), batch_poll_seconds=float(backend.get("batch_poll_seconds", defaults.BATCH_POLL_SECONDS)),
            cache_url=cache.get("url") if cache.get("enabled", True) else None,
            cache_max_gb=cache.get("max_gb"),
            structured_output=backend.get("structured_output"),
            on_truncated=str(backend.get("on_truncated") or "error"),
        )

    def with_overrides(self, **changes: Any) -> "ClientSpec":
        if changes.get("provider", self.provider) != self.provider:
            changes.setdefault("structured_output", None)  # another provider speaks its own dialect
        return replace(self, **changes)

    @property
    def sampling_params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.sampling}

    @cached_property
    def conversation_formatter(self):
        if not self.formatter:
            return None
        from hydra.utils import instantiate

        from recipe.services.conversation_formatter import ConversationFormatter

        allowed_class(dict(self.formatter).get("_target_"), ConversationFormatter, "formatter._target_")
        try:
            return instantiate(dict(self.formatter))
        except Exception as exc:
            raise ConfigError(f"formatter {dict(self.formatter).get('_target_')}: {exc}") from None

    @property
    def constrains_output(self) -> bool:
        """Whether this backend, on this route (chat, or a formatter's raw text), constrains
        decoding to a schema; the answer is in the one table of structured_output."""
        from recipe.services import structured_output

        return structured_output.supports(structured_output.dialect_for(self.provider, self.structured_output),
                                          text=bool(self.formatter))

    def __dask_tokenize__(self) -> tuple:
        data = asdict(self)
        data.pop("api_key")
        return ("ClientSpec", sorted(data.items(), key=lambda kv: kv[0]))

    def client_kwargs(self) -> dict:
        """The client's arguments, the key resolved here (in the process that builds the client).

        The key is remembered as a secret of this process: whatever this process writes (an
        error record, a message) is redacted of it."""
        key = resolve_key(self.api_key)
        remember(key)
        return {"provider": self.provider, "api_base": self.api_base, "api_key": key,
                "timeout": self.timeout, "num_retries": self.num_retries,
                "max_concurrency": self.max_concurrency, "rpm": self.rpm, "tpm": self.tpm,
                "endpoint_id": self.endpoint_id, "structured_output": self.structured_output,
                "on_truncated": self.on_truncated}


def build_client(cfg: Any, asynchronous: bool = False):
    """A ``LiteLLMClient`` (or ``AsyncLiteLLMClient``) from a composed config or a :class:`ClientSpec`.

    The model name is not bound: pass ``model=cfg.model.name`` per call, as the interface says.
    """
    from recipe.services.litellm_client import AsyncLiteLLMClient, LiteLLMClient

    spec = cfg if isinstance(cfg, ClientSpec) else ClientSpec.from_config(cfg)
    cls = AsyncLiteLLMClient if asynchronous else LiteLLMClient
    return cls(**spec.client_kwargs(), cache=open_cache(spec))


def open_cache(spec: ClientSpec):
    """The spec's request cache: Redis for ``cache_url``, else SQLite in ``cache_dir``, else none."""
    if spec.cache_url:
        from recipe.services.redis_cache import RedisCache

        return RedisCache(spec.cache_url)
    if not spec.cache_dir:
        return None
    from recipe.services.cache import RequestCache

    max_bytes = int(spec.cache_max_gb * 1e9) if spec.cache_max_gb else None
    return RequestCache(spec.cache_dir, max_bytes=max_bytes)


_clients: dict = {}
_clients_lock = threading.Lock()


def shared_async_client(spec: ClientSpec):
    """This process's one async client for ``spec`` (built on first use, with the run's limiter)."""
    # The token leaves the key out (it names graphs); two keys must still mean two clients.
    key = (repr(spec.__dask_tokenize__()), spec.api_key)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                from recipe.services.budget import budget_for
                from recipe.services.cluster_limits import _current_worker, limiter_for
                from recipe.services.litellm_client import AsyncLiteLLMClient

                stats = process_stats()
                worker = _current_worker() if spec.cluster_limits and spec.budget is not None else None
                client = AsyncLiteLLMClient(**spec.client_kwargs(), cache=open_cache(spec), stats=stats,
                                            limiter=limiter_for(spec, stats), budget=budget_for(spec.budget, worker))
                if spec.batch:
                    from pathlib import Path

                    from recipe.services.batch import BatchCollector

                    where = spec.batch_dir or str(Path(spec.cache_dir or ".") / "batches")
                    client.batcher = BatchCollector(client, where, poll_seconds=spec.batch_poll_seconds)
                _clients[key] = client
    return client


_stats = None


def process_stats():
    """One usage counter per process, shared by every client the run builds there."""
    global _stats
    if _stats is None:
        from recipe.services.usage import UsageStats

        _stats = UsageStats()
    return _stats


def forget_clients() -> None:
    """Drop this process's clients (between runs in one process, e.g. tests), stopping what
    they run in the background (a cluster limiter's refresh task)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        close = getattr(getattr(client, "limiter", None), "close", None)
        if close is not None:
            close()


# --- stages -------------------------------------------------------------------------------------

def allowed_class(target: Any, base: type, where: str) -> type:
    """The class ``target`` names, if it is ``base`` or a subclass of it; else one ConfigError.

    The one allow-list for what a config may instantiate (``formatter._target_``, each stage's
    ``_target_``): only the module is imported, nothing is built, so a config naming another
    class (``tarfile.TarFile``, ``pathlib.Path``) or a function is refused before it can do
    anything - printing a config (``--cfg job``) included."""
    import importlib

    path = str(target or "")
    module, found = None, None
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        found = module
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            found = None
        break
    if found is None:
        raise ConfigError(f"{where}={path!r}: not found (give the full dotted path of a {base.__name__} class)")
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{where}={path!r}: not a {base.__name__} class (a subclass of "
                          f"{base.__module__}.{base.__qualname__}); only those can be used here")
    return found


def _stage_class(target: Any):
    from recipe.stages.base import Stage

    return allowed_class(target, Stage, "_target_")


def stage_target_problems(recipe: dict) -> list[str]:
    """Each stage whose ``_target_`` is not a stage class, without building any stage (what
    ``--cfg job`` checks: printing a config builds nothing)."""
    problems = []
    for name, stage_cfg in ((recipe or {}).get("stages") or {}).items():
        if isinstance(stage_cfg, dict) and "_target_" in stage_cfg:
            try:
                _stage_class(stage_cfg["_target_"])
            except ConfigError as exc:
                problems.append(f"recipe.stages.{name}.{exc}")
    return problems


def _param_names(cls: type) -> set[str] | None:
    """The parameters a stage class takes (dataclass fields, or a pydantic model's), if it says."""
    if is_dataclass(cls):
        return {f.name for f in fields(cls) if f.init}
    model_fields = getattr(cls, "model_fields", None)
    return set(model_fields) if isinstance(model_fields, dict) else None


def _stage_messages(name: str, exc: BaseException) -> list[str]:
    """A stage's own error as ``recipe.stages.NAME.PARAM: problem`` lines, one per parameter when
    the stage names them (:class:`StageParamsError`), else ``recipe.stages.NAME: problem``."""
    from recipe.errors import StageParamsError

    if isinstance(exc, StageParamsError):
        return [f"recipe.stages.{name}.{param}: {message.removeprefix(f'{param} ')}"
                for param, message in exc.problems]
    text = str(exc).removeprefix("invalid config: ")
    for prefix in (f"stage {name!r}: ", f"recipe.stages.{name}: "):
        text = text.removeprefix(prefix)
    return [f"recipe.stages.{name}: {text}"]


def _build_stages(recipe: dict, spec: ClientSpec | None, output_dir: str | None, partition_size: int,
                  world: bool) -> tuple[list, list[str]]:
    """The stages, and every problem found on the way (all of them: one bad stage does not hide
    the next). ``world=False`` leaves out what depends on the machine (the input files)."""
    from recipe.stages.base import LLMStage
    from recipe.stages.read import ReadStage
    from recipe.stages.write import WriteStage

    stages: list = []
    problems: list[str] = []
    declared = (recipe or {}).get("stages") or {}
    if not declared:
        problems.append("recipe.stages: a recipe needs at least one stage")
    for name, stage_cfg in declared.items():
        if not isinstance(stage_cfg, dict) or "_target_" not in stage_cfg:
            problems.append(f"recipe.stages.{name}: needs a _target_ naming a stage class")
            continue
        try:
            cls = _stage_class(stage_cfg["_target_"])
        except ConfigError as exc:
            problems.append(f"recipe.stages.{name}.{exc}")
            continue
        params = {k: v for k, v in stage_cfg.items() if k != "_target_"}
        known = _param_names(cls)
        if known is not None:  # every unknown parameter named, not just the first Python trips on
            takes = ", ".join(sorted(known - {"name", "client"}))
            for key in [k for k in params if k not in known]:
                problems.append(f"recipe.stages.{name}.{key}: unknown parameter ({cls.__name__} takes: {takes})")
                del params[key]
        inject: dict[str, Any] = {"name": name}
        if issubclass(cls, LLMStage) and not stage_cfg.get("client"):
            inject["client"] = spec
        if issubclass(cls, WriteStage) and not stage_cfg.get("path"):
            inject["path"] = output_dir
        if known is not None and "output_dir" in known and not stage_cfg.get("output_dir"):
            inject["output_dir"] = output_dir  # stages that write beside the results (dedup's removed/)
        if issubclass(cls, ReadStage):
            if "partition_size" not in stage_cfg:
                inject["partition_size"] = partition_size
            if not world:
                params.pop("path", None)  # whether the input exists is checked when the run starts
        try:
            stages.append(cls(**{**params, **inject}))
        except (ConfigError, TypeError, ValueError) as exc:  # the stage's own checks (ValueError: pydantic's)
            problems += _stage_messages(name, exc)
    return _write_last(stages), problems


def _write_last(stages: list) -> list:
    """The chain with its one write stage last. A stage added with ``+recipe.stages.NAME=...``
    lands after ``write`` in the mapping, where it would never run (its records unwritten, the
    run never committed); it runs before the write instead. (Several write stages: kept as given.)"""
    from recipe.stages.write import WriteStage

    writes = [stage for stage in stages if isinstance(stage, WriteStage)]
    if len(writes) != 1 or stages[-1] is writes[0]:
        return stages
    return [stage for stage in stages if stage is not writes[0]] + writes


def build_stages(recipe: dict, spec: ClientSpec, output_dir: str, partition_size: int = 256) -> list:
    """Instantiate each stage of ``recipe['stages']`` in order, injecting the run's client, output
    path and ``dask.partition_size`` where the stage does not set its own.

    Raises one :class:`ConfigError` listing every bad stage, each named by its key."""
    stages, problems = _build_stages(recipe, spec, output_dir, partition_size, world=True)
    refuse(problems)
    return stages


def stage_problems(recipe: dict) -> list[str]:
    """Every problem of the stages' parameters, without touching the machine (input files), so
    that a config's validation reports them with the rest, before anything starts."""
    return _build_stages(recipe, None, None, 256, world=False)[1]
