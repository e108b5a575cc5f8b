"""A run's plan: everything the run needs, taken from its config once, before anything starts.

The config is checked (one report of every problem: unknown keys, values, stage parameters,
backends) and resolved exactly once here; the later steps read only the plan. A mistake is one
:class:`ConfigError` before any request, server or cluster starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from recipe.errors import ConfigError, refuse
from recipe.clients.factory import ClientSpec


@dataclass
class RunPlan:
    """The run folder, its identity, the client spec (with its limits) and the built stages.

    ``data`` is the resolved config (API keys kept as references, see ``env_keys``), for the
    settings read as they are: ``dask``, ``backend``, ``target``, ``budget``, ``progress``.
    """

    data: dict
    output_dir: str
    ident: dict
    config_hash: str
    spec: ClientSpec
    stages: list
    folder: Any  # a recipe.storage.run_folder.RunFolder

    @property
    def resume(self) -> bool:
        return bool(self.data.get("resume", True))

    @property
    def retry_failed(self) -> bool:
        return bool(self.data.get("retry_failed", True))

    @property
    def dask(self) -> dict:
        return self.data["dask"]

    @property
    def backend(self) -> dict:
        return self.data["backend"]

    @property
    def progress(self) -> bool:
        return bool(self.data.get("progress"))

    @property
    def wants_target(self) -> bool:
        from recipe.engine import target

        return target.wanted(self.data)

    def llm_specs(self) -> list:
        """The client spec of every model stage (a stage may change the model or the backend), and
        of each of its ``backend.fallbacks`` models (each priced, each its own worst case)."""
        return [spec for stage in _llm_stages(self.stages) if stage.client is not None for spec in stage.spec.chain]

    def with_changes(self, **changes: Any) -> None:
        """The run's spec, and every model stage's, with ``changes`` (the budget, the batch folder):
        the spec carries them to every worker."""
        changed = self.spec.with_overrides(**changes)
        for stage in _llm_stages(self.stages):
            if stage.client is not None:
                stage.client = changed if stage.client == self.spec else stage.client.with_overrides(**changes)
        self.spec = changed


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
    stages = build_stages(data["recipe"], spec, output_dir,
                          target.partition_size(data.get("target"), data["dask"]["partition_size"]),
                          provenance=bool(data.get("provenance")))
    from recipe.stages import chain

    chain.check(stages)  # a field a stage reads that nothing provides: refused before any request
    if any(getattr(stage, "format", None) == "hf" for stage in stages) and not storage.is_remote(output_dir):
        from recipe.stages.io.hf_dataset import check_folder

        check_folder(output_dir, ours=folder.info() is not None)  # never overwrite a user's README.md
    _mark_counting_stage(stages)
    plan = RunPlan(data=data, output_dir=str(output_dir), ident=ident, config_hash=config_hash, spec=spec,
                   stages=stages, folder=folder)
    budget.prepare(data, plan.llm_specs(), key="check", attempts=[])  # an unpriced max_usd: refused now
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
