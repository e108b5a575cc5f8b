"""The structured-config schema: Hydra checks types and unknown keys at composition.

Range checks that Hydra cannot express live in :func:`validate`, which gathers every
problem and reports them together, each naming its key, before any request is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from recipe.config import defaults
from recipe.config.concurrency import parse_max_concurrency

TRUNCATION_POLICIES = ("keep", "error", "retry")


@dataclass
class PriceConfig:
    """USD per million tokens; overrides litellm's price map (needed for budget.max_usd on local models)."""

    input_per_mtok: Optional[float] = None
    output_per_mtok: Optional[float] = None


@dataclass
class ModelConfig:
    name: str = MISSING  # the model's name at the provider
    context_length: Optional[int] = None  # tokens; longer prompts become error records
    description: str = ""
    price: PriceConfig = field(default_factory=PriceConfig)
    # The longest answer the model can give, thinking included: a reasoning request's worst case
    # for the budget. null: litellm's map (then model.context_length, then 4096).
    max_output_tokens: Optional[int] = None
    # Whether the model reasons (thinks before it answers), for the budget's worst case even when
    # no request asks for reasoning; null: litellm's map says (supports_reasoning).
    reasoning: Optional[bool] = None


@dataclass
class BackendConfig:
    provider: str = MISSING  # litellm's prefix: nvidia_nim, openai, hosted_vllm, ollama, ...
    api_base: Any = None  # a URL, or a list of URLs: replicas of one model (recipe.clients.replicas)
    api_key: Optional[str] = None  # always an ${oc.env:...} interpolation, never a literal
    # false: task graphs carry the key's variable name and workers read their own environment;
    # true: the driver's key travels with the tasks (for workers that lack the variable).
    ship_key: bool = False
    timeout: float = defaults.TIMEOUT
    num_retries: int = defaults.NUM_RETRIES
    # N: a fixed limit (lowered only by 429s); auto or auto:N: adapted from latency too, N the ceiling
    max_concurrency: Any = defaults.MAX_CONCURRENCY
    rpm: Optional[float] = None
    tpm: Optional[float] = None
    # llamacpp only: start the embedded server for the run when api_base is null.
    start_local_server: bool = False
    model_path: Optional[str] = None
    n_ctx: Optional[int] = None  # removed: the server starts with model.context_length (see REPLACED_KEYS)
    # The provider's batch API (OpenAI-compatible): about half the price, answers within the window.
    batch: bool = False
    batch_poll_seconds: float = defaults.BATCH_POLL_SECONDS
    # How the server takes a JSON Schema (clients/structured_output.py DIALECTS): openai, vllm,
    # nim, ollama, llamacpp or none; null: the provider's own.
    structured_output: Optional[str] = None
    # An answer cut at max_tokens (finish_reason "length"): keep it, make it an error record, or
    # retry it (up to num_retries). An empty answer is never a success, whatever this says.
    on_truncated: str = "error"
    # Merged into every request's JSON body, e.g. {chat_template_kwargs: {enable_thinking: false}}
    # for vLLM serving Qwen3 (recipe/clients/litellm_client.py).
    extra_body: Optional[Any] = None
    # Models that answer a record the run's model cannot (context too long, model not found, content
    # filter, or this backend's breaker open): [{model, provider, api_base, ...}] (config/fallbacks.py)
    fallbacks: Optional[Any] = None


@dataclass
class FormatterConfig:
    _target_: Optional[str] = None  # null: chat completions, no formatter
    chat_template: Optional[str] = None
    bos_token: Optional[str] = None
    eos_token: Optional[str] = None


@dataclass
class SamplingConfig:
    temperature: Optional[Any] = None  # a number, or a per-request distribution (samplers/per_request.py)
    top_p: Optional[Any] = None
    top_k: Optional[int] = None
    max_tokens: Optional[int] = None
    n: int = 1
    seed: Optional[int] = None
    stop: Optional[Any] = None  # a string or a list of strings
    reasoning_effort: Optional[str] = None  # a reasoning model's effort (REASONING_EFFORTS), sent as is
    thinking_budget: Optional[int] = None  # Anthropic's extended thinking: budget_tokens (>= 1024)


@dataclass
class DaskConfig:
    address: Optional[str] = None  # an existing scheduler; null for a local one
    n_workers: int = 0  # 0: threads in this process; >0: a LocalCluster of worker processes
    threads_per_worker: int = defaults.THREADS_PER_WORKER
    partition_size: int = 256  # records per partition when reading
    dashboard: bool = False  # serve Dask's dashboard (LocalCluster, 127.0.0.1) and print its address


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = MISSING  # a local disk: SQLite's locks do not hold on NFS
    max_gb: Optional[float] = 10.0  # least recently used entries are evicted beyond it; null: unbounded
    url: Optional[str] = None  # redis://host:port/db: one cache for the whole cluster (instead of dir)


@dataclass
class BudgetConfig:
    """A cap the whole run (every attempt, every worker) never crosses; null: no cap."""

    max_usd: Optional[float] = None
    max_tokens: Optional[int] = None


@dataclass
class TargetConfig:
    """Exactly ``records`` records in the output (after filters, failures, dedup); null: every input."""

    records: Optional[int] = None
    max_rounds: int = 10  # recipes that make their own seeds: rounds with shifted seeds, at most this many


@dataclass
class HubConfig:
    repo_id: Optional[str] = None  # org/name: push a format=hf dataset there (token: HF_TOKEN)
    private: bool = False


@dataclass
class MetricsConfig:
    """Prometheus metrics while a run goes on (recipe.engine.metrics; the `metrics` extra)."""

    port: Optional[int] = None  # null: no metrics endpoint
    host: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus on another machine scrape it


@dataclass
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    formatter: FormatterConfig = field(default_factory=FormatterConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    recipe: Any = MISSING  # free-form: stages keyed by name, each with a _target_
    input: Any = None  # a path or glob, or a list of them (a list needs Any: OmegaConf has no Union of str and list)
    output_dir: Optional[str] = None  # null: the run folder, named after the recipe and the config hash
    dask: DaskConfig = field(default_factory=DaskConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    progress: bool = True
    resume: bool = True  # continue the run a folder holds; false: clear its results first
    retry_failed: bool = True  # a rerun does again records that failed for transient reasons
    preview: Optional[int] = None  # N: the chain on the first N records and an estimate (recipe.engine.preview)
    # true: each record gets `_provenance`, per model stage that answered it: the model, the sampling
    # values sent (a distribution's drawn value), whether the cache answered; part of the run's identity
    provenance: bool = False


def register() -> None:
    """Put the schema in Hydra's ConfigStore; the primary config names it in its defaults."""
    ConfigStore.instance().store(name="recipe_schema", node=RecipeConfig)


def validate(cfg: Any) -> list[str]:
    """Every problem in a composed config's values, each as ``key: problem``: unknown keys and values
    out of range. The stages' own parameters need the stage classes, a layer above the config: the
    run's plan (:func:`recipe.engine.plan.checked_data`) adds them to the same report."""
    return list(dict.fromkeys(value_problems(cfg)))  # a key reported twice (unknown, then out of range) once


def recipe_stages(cfg: Any) -> dict:
    """The composed config's ``recipe.stages``, resolved (none when the recipe has none)."""
    stages = cfg.recipe.get("stages") if hasattr(cfg.recipe, "get") else None
    return _resolved_stages(stages) if stages else {}


def value_problems(cfg: Any) -> list[str]:
    """Unknown keys and values out of range (what :func:`validate` reports besides the stages)."""
    problems = unknown_keys(cfg)
    b = cfg.backend

    def check(ok: bool, key: str, message: str, value: Any) -> None:
        if not ok:
            problems.append(f"{key}={value!r}: {message}")

    problems += sampling_problems(cfg.sampling, "sampling")
    check(b.timeout > 0, "backend.timeout", "must be > 0", b.timeout)
    check(b.batch_poll_seconds > 0, "backend.batch_poll_seconds", "must be > 0", b.batch_poll_seconds)
    check(b.num_retries >= 0, "backend.num_retries", "must be >= 0", b.num_retries)
    try:
        parse_max_concurrency(b.max_concurrency)
    except ValueError as exc:
        problems.append(f"backend.max_concurrency={b.max_concurrency!r}: {exc}")
    for key in ("rpm", "tpm"):
        value = getattr(b, key)
        if value is not None:
            check(value > 0, f"backend.{key}", "must be > 0 (or null for no limit)", value)
    check(b.on_truncated in TRUNCATION_POLICIES, "backend.on_truncated",
          f"must be one of {', '.join(TRUNCATION_POLICIES)}", b.on_truncated)
    check(cfg.dask.n_workers >= 0, "dask.n_workers", "must be >= 0", cfg.dask.n_workers)
    if cfg.cache.get("max_gb") is not None:
        check(cfg.cache.max_gb > 0, "cache.max_gb", "must be > 0 (or null for no bound)", cfg.cache.max_gb)
    check(cfg.dask.threads_per_worker >= 1, "dask.threads_per_worker", "must be >= 1", cfg.dask.threads_per_worker)
    check(cfg.dask.partition_size >= 1, "dask.partition_size", "must be >= 1", cfg.dask.partition_size)
    extra_body = b.get("extra_body")
    if extra_body is not None and not OmegaConf.is_dict(extra_body) and not isinstance(extra_body, dict):
        problems.append(f"backend.extra_body={extra_body!r}: must be a mapping (merged into each request's body)")
    from recipe.config import fallbacks

    problems += fallbacks.problems(b.get("fallbacks"))
    if cfg.model.get("max_output_tokens") is not None:
        check(cfg.model.max_output_tokens >= 1, "model.max_output_tokens", "must be >= 1 (or null)",
              cfg.model.max_output_tokens)
    if cfg.model.context_length is not None:
        check(cfg.model.context_length >= 1, "model.context_length", "must be >= 1 (or null)", cfg.model.context_length)
    budget, price = cfg.budget, cfg.model.price
    if budget.max_usd is not None:
        check(budget.max_usd > 0, "budget.max_usd", "must be > 0 (or null for no cap)", budget.max_usd)
    if budget.max_tokens is not None:
        check(budget.max_tokens >= 1, "budget.max_tokens", "must be >= 1 (or null for no cap)", budget.max_tokens)
    for key in ("input_per_mtok", "output_per_mtok"):
        value = getattr(price, key)
        if value is not None:
            check(value >= 0, f"model.price.{key}", "must be >= 0 (USD per million tokens)", value)
    if (price.input_per_mtok is None) != (price.output_per_mtok is None):
        problems.append("model.price: give both input_per_mtok and output_per_mtok, or neither")
    if cfg.target.records is not None:
        check(cfg.target.records >= 1, "target.records", "must be >= 1 (or null for every input)", cfg.target.records)
    if cfg.metrics.port is not None:
        check(0 < cfg.metrics.port < 65536, "metrics.port", "must be a TCP port (1-65535), or null for none",
              cfg.metrics.port)
    check(cfg.target.max_rounds >= 1, "target.max_rounds", "must be >= 1", cfg.target.max_rounds)
    if cfg.get("preview") is not None:
        check(cfg.preview >= 1, "preview", "must be >= 1 (records to preview), or null", cfg.preview)
    given = cfg.get("input")
    if given is not None:
        paths_given = list(given) if OmegaConf.is_list(given) else [given]
        check(bool(paths_given) and all(isinstance(p, str) and p for p in paths_given), "input",
              "must be a path or glob, or a list of them", OmegaConf.to_container(given) if OmegaConf.is_list(given) else given)
    stages = cfg.recipe.get("stages") if hasattr(cfg.recipe, "get") else None
    if not stages:
        problems.append("recipe.stages: a recipe needs at least one stage")
    for name, stage in (stages or {}).items():
        if not hasattr(stage, "get"):
            continue
        n = stage.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            problems.append(f"recipe.stages.{name}.n={n!r}: must be an integer >= 1 (or null)")
        sampling = stage.get("sampling")
        if sampling is not None:
            problems += sampling_problems(sampling, f"recipe.stages.{name}.sampling")
    return problems


def _resolved_stages(stages: Any) -> dict:
    """Each stage's parameters, interpolations resolved; a stage that cannot be resolved here (a
    key from an unset variable) is left out: resolving the run's config reports it."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(stages):
        return dict(stages)
    resolved: dict = {}
    for name in stages.keys():
        node = stages._get_node(name)
        try:
            resolved[name] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_dict(node) else stages[name]
        except Exception:  # noqa: BLE001 - reported where the whole config is resolved
            continue
    return resolved


_SAMPLING_RANGES: dict[str, tuple[type, Any, str]] = {
    # key: (type, check, message); a type of float also takes ints
    "temperature": (float, lambda v: v >= 0, "must be >= 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "top_k": (int, lambda v: v >= 1, "must be >= 1"),
    "max_tokens": (int, lambda v: v >= 1, "must be >= 1"),
    "n": (int, lambda v: v >= 1, "must be >= 1"),
    "seed": (int, lambda v: True, ""),
    "thinking_budget": (int, lambda v: v >= 1024, "must be >= 1024 (Anthropic's smallest thinking budget)"),
}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")


def sampling_problems(sampling: Any, where: str) -> list[str]:
    """Unknown keys, wrong types and out-of-range values of a sampling mapping (the run's or a
    stage's own), each as ``where.key=value: problem``."""
    if not hasattr(sampling, "items"):
        return [f"{where}={sampling!r}: must be a mapping of sampling keys"]
    known = {f.name for f in fields(SamplingConfig)}
    if where != "sampling":  # a stage may stream its own requests (query_model's ``stream``)
        known.add("stream")
    problems: list[str] = []
    for key, value in sampling.items():
        if key not in known:
            problems.append(f"{where}.{key}: unknown key ({where} takes: {', '.join(sorted(known))})")
            continue
        if value is None:
            continue
        if key == "stream":
            if not isinstance(value, bool):
                problems.append(f"{where}.stream={value!r}: must be true or false")
            continue
        if key == "reasoning_effort":
            if value not in REASONING_EFFORTS:
                problems.append(f"{where}.reasoning_effort={value!r}: must be one of {', '.join(REASONING_EFFORTS)}")
            continue
        if key == "stop":
            stop = [value] if isinstance(value, str) else (list(value) if hasattr(value, "__iter__") else [value])
            if not all(isinstance(x, str) for x in stop):
                problems.append(f"{where}.stop={value!r}: must be a string or a list of strings")
            continue
        kind, ok, message = _SAMPLING_RANGES[key]
        from recipe.config import distributions

        if distributions.is_distribution(value):
            problems += distributions.problems(key, value, where, ok)
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)):
            problems.append(f"{where}.{key}={value!r}: must be {'an integer' if kind is int else 'a number'}")
        elif not ok(value):
            problems.append(f"{where}.{key}={value!r}: {message}")
    return problems


# Keys that said again what another key says: setting one is an error naming its replacement.
REPLACED_KEYS = {("backend", "n_ctx"): "model.context_length"}

_SECTIONS = {"model": ModelConfig, "backend": BackendConfig, "formatter": FormatterConfig,
             "sampling": SamplingConfig, "dask": DaskConfig, "cache": CacheConfig,
             "budget": BudgetConfig, "target": TargetConfig, "hub": HubConfig}


def unknown_keys(cfg: Any) -> list[str]:
    """Keys the schema does not know. Hydra refuses them at composition, except when a user adds
    them with ``+key=value`` (which Hydra allows even on a typed node): those are caught here."""
    problems: list[str] = []
    known_top = {f.name for f in fields(RecipeConfig)} | {"hydra"}
    for key in cfg.keys():
        if key not in known_top:
            problems.append(f"{key}: unknown key (top-level keys: {', '.join(sorted(known_top - {'hydra'}))})")
    for section, cls in _SECTIONS.items():
        node = cfg.get(section)
        if node is None or not hasattr(node, "keys"):
            continue
        known = {f.name for f in fields(cls)}
        for key in node.keys():
            replacement = REPLACED_KEYS.get((section, key))
            if replacement is not None and node.get(key) is not None:
                problems.append(f"{section}.{key}: no longer taken; set {replacement} instead (the one place "
                                "a model's context is given; the embedded server starts with it)")
            elif key not in known:
                problems.append(f"{section}.{key}: unknown key ({section} takes: {', '.join(sorted(known))})")
    return problems
