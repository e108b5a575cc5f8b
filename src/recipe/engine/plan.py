"""A run's plan: everything the run needs, taken from its config once, before anything starts.

The config is checked (one report of every problem: unknown keys, values, stage parameters,
backends) and resolved exactly once here; the later steps read only the plan. A mistake is one
:class:`ConfigError` before any request, server or cluster starts.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from recipe.errors import ConfigError, refuse
from recipe.clients.factory import ClientSpec
from recipe.config.declared_models import DeclaredModels
from recipe.config.schema import BudgetConfig, DaskConfig, MetricsConfig, TargetConfig


@dataclass(frozen=True)
class LocalServer:
    """``backend.start_local_server`` with no ``api_base``: the embedded llama.cpp server to start."""

    model_path: str | None


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, typed, read from the config once: the run folder, its identity,
    the client spec (with its limits), the built stages, and each setting the later steps act on.

    Below the plan nothing reads the config: the steps read these fields. ``config`` is the
    resolved config kept whole for the one consumer that shows it whole: the dataset card (its
    "Produced by" config). API keys in it stay references (``env_keys``). The price table and the
    budget read ``models`` (prices, output limits, reasoning) and ``budget``. A plan is never
    changed: :meth:`with_changes` makes another.
    """

    config: dict
    models: DeclaredModels
    output_dir: str
    ident: dict
    config_hash: str
    spec: ClientSpec
    stages: list
    folder: Any  # a recipe.storage.run_folder.RunFolder (None for a preview)
    resume: bool = True
    retry_failed: bool = True
    progress: bool = False
    has_input: bool = False  # an input file (not samplers or seeds): says why a run made no records
    dask: DaskConfig = field(default_factory=DaskConfig)
    target: TargetConfig | None = None  # target.records set
    budget: BudgetConfig | None = None  # a max_usd or max_tokens set
    metrics: MetricsConfig | None = None  # metrics.port set
    local_server: LocalServer | None = None

    @property
    def wants_target(self) -> bool:
        return self.target is not None

    def llm_specs(self) -> list:
        """The client spec of every model stage (a stage may change the model or the backend), and
        of each of its ``backend.fallbacks`` models (each priced, each its own worst case)."""
        return [spec for stage in _llm_stages(self.stages) if stage.client is not None for spec in stage.spec.chain]

    def with_stage_clients(self, change: Callable[[ClientSpec], ClientSpec], run_spec: ClientSpec | None = None) -> "RunPlan":
        """This plan with ``change`` applied to every model stage's client (copies of the stages;
        these are not touched) and the run's spec replaced by ``run_spec``, or changed the same way."""
        asks = {id(stage) for stage in _llm_stages(self.stages) if stage.client is not None}
        stages = []
        for stage in self.stages:
            if id(stage) in asks:
                stage = copy.copy(stage)
                stage.client = change(stage.client)
            stages.append(stage)
        return dataclasses.replace(self, spec=run_spec or change(self.spec), stages=stages)

    def with_changes(self, **changes: Any) -> "RunPlan":
        """This plan with ``changes`` (the budget, the batch folder) in the run's spec and every
        model stage's: the spec carries them to every worker."""
        return self.with_stage_clients(lambda spec: spec.with_overrides(**changes))


def settings(data: dict) -> dict:
    """The plan's typed settings from a checked, resolved config (the one place that reads them)."""
    target = data.get("target") or {}
    budget = data.get("budget") or {}
    metrics = data.get("metrics") or {}
    backend = data.get("backend") or {}
    return {
        "resume": bool(data.get("resume", True)),
        "retry_failed": bool(data.get("retry_failed", True)),
        "progress": bool(data.get("progress")),
        "has_input": bool(data.get("input")),
        "models": DeclaredModels.read(data),
        "dask": DaskConfig(**(data.get("dask") or {})),
        "target": TargetConfig(**target) if target.get("records") else None,
        "budget": BudgetConfig(**budget) if budget.get("max_usd") is not None or budget.get("max_tokens") is not None
        else None,
        "metrics": MetricsConfig(**metrics) if metrics.get("port") is not None else None,
        "local_server": LocalServer(backend.get("model_path"))
        if backend.get("start_local_server") and not backend.get("api_base") else None,
    }


def _llm_stages(stages: list) -> list:
    from recipe.stages.base import LLMStage

    return [stage for stage in stages if isinstance(stage, LLMStage)]


def compose(overrides: Sequence[str] = (), config_name: str = "config",
            config_dirs: Sequence[str] = ()) -> Any:
    """``recipe.compose``: the composed config for ``overrides``, as ``python -m recipe`` would see
    it, with its values and its stages' parameters checked (one report of every problem)."""
    from recipe.config import schema
    from recipe.config.compose import compose_unchecked
    from recipe.stages.build import stage_problems

    cfg = compose_unchecked(overrides, config_name=config_name, config_dirs=config_dirs)
    stages = schema.recipe_stages(cfg)
    refuse(schema.validate(cfg) + (stage_problems({"stages": stages}) if stages else []))
    return cfg


def checked_data(cfg: Any, resolve: Callable[[Any], dict] | None = None) -> dict:
    """``cfg`` checked as a whole (every problem in one report) and resolved, once.

    ``resolve`` makes the plain dict; by default keys stay variable names (EnvKey), so the task
    graph never holds one. The CLI's precheck resolves them, to refuse a missing variable."""
    from recipe.engine import preflight
    from recipe.config.compose import setup
    from recipe.config.env_keys import resolved_by_reference
    from recipe.config import schema
    from recipe.stages.build import stage_problems

    setup()  # the resolvers, for a config made outside recipe.compose
    problems = schema.value_problems(cfg)
    try:
        data = (resolve or resolved_by_reference)(cfg)
    except ConfigError as exc:
        if not problems:
            raise
        refuse(problems + [str(exc).removeprefix("invalid config: ")])
    # the stages' parameters from the resolved config: nothing is resolved twice
    stages = (data.get("recipe") or {}).get("stages") if isinstance(data.get("recipe"), dict) else None
    refuse(problems + (stage_problems({"stages": stages}) if stages else []) + preflight.backend_problems(data))
    port = (data.get("metrics") or {}).get("port")
    if port is not None:
        from recipe.engine.metrics import require_prometheus

        require_prometheus(port)
    return data


def resolve(cfg: Any, output_dir: str | None = None) -> RunPlan:
    """The plan of ``cfg``'s run; refuses a bad config, an unwritable folder or another run's
    folder before anything starts or is written.

    The run folder is ``output_dir``, else ``cfg.output_dir``, else Hydra's run dir (the CLI makes
    it the run folder), else ``<RECIPE_RUNS_DIR or outputs>/<recipe>-<config hash>``.
    """
    from recipe.engine import preflight
    from recipe.config import identity as run_identity
    from recipe.engine import target
    from recipe.stages.build import build_stages
    from recipe.storage.run_folder import RunFolder
    from recipe.clients import budget
    from recipe import storage

    data = checked_data(cfg)
    ident = run_identity.identity(data)
    config_hash = run_identity.config_hash(ident)
    output_dir = (output_dir or data.get("output_dir") or _hydra_output_dir()
                  or str(Path(run_identity.runs_root()) / run_identity.run_name(data, ident)))
    spec = ClientSpec.from_config(data)
    if not storage.is_remote(output_dir):  # a bucket is not made here; its folder needs no mkdir
        preflight.check_writable(output_dir, "output_dir")
    if spec.cache_dir and not spec.cache_url:
        preflight.check_writable(spec.cache_dir, "cache.dir")
    folder = RunFolder(output_dir)
    folder.check(config_hash)  # before anything starts or is written
    if spec.cache_url:  # a cluster-wide cache that is not there is refused before anything starts
        from recipe.clients.factory import open_cache

        open_cache(spec).ping()
    # Stages before any server or cluster: a missing input is refused here.
    typed = settings(data)
    stages = build_stages(data["recipe"], spec, output_dir,
                          target.partition_size(typed["target"], typed["dask"].partition_size),
                          provenance=bool(data.get("provenance")))
    from recipe.stages import chain

    chain.check(stages)  # a field a stage reads that nothing provides: refused before any request
    if any(getattr(stage, "format", None) == "hf" for stage in stages):
        from recipe.stages.io.hf_dataset import check_folder

        check_folder(output_dir, ours=folder.info() is not None)  # never overwrite a user's README.md
    _mark_counting_stage(stages)
    plan = RunPlan(config=data, output_dir=str(output_dir), ident=ident, config_hash=config_hash, spec=spec,
                   stages=stages, folder=folder, **typed)
    budget.prepare(plan.budget, plan.models, plan.llm_specs(), key="check", attempts=[])  # unpriced max_usd: refused now
    return plan


def _mark_counting_stage(stages: list) -> None:
    """The last model stage's answers move the progress bar (earlier ones would count twice)."""
    llm = _llm_stages(stages)
    if llm:
        llm[-1].counts_progress = True


def _hydra_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return None
