"""From a recipe's ``stages`` mapping to stage objects: each ``_target_`` resolved, the run's client,
output folder and partition size injected, and every bad parameter of every stage reported at once.

The config's validation and the run build stages here, the same way, so a bad parameter is found
before a run exactly as it would be in it.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from recipe.clients.factory import ClientSpec
from recipe.config.targets import allowed_class
from recipe.errors import ConfigError, refuse

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
    from recipe.stages.io.read import ReadStage
    from recipe.stages.io.write import WriteStage

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
    from recipe.stages.io.write import WriteStage

    writes = [stage for stage in stages if isinstance(stage, WriteStage)]
    if len(writes) != 1 or stages[-1] is writes[0]:
        return stages
    return [stage for stage in stages if stage is not writes[0]] + writes


def build_stages(recipe: dict, spec: ClientSpec, output_dir: str, partition_size: int = 256,
                 provenance: bool = False) -> list:
    """Instantiate each stage of ``recipe['stages']`` in order, injecting the run's client, output
    path and ``dask.partition_size`` where the stage does not set its own; with ``provenance`` (the
    run's ``provenance: true``) every model stage records what answered each record.

    Raises one :class:`ConfigError` listing every bad stage, each named by its key."""
    from recipe.stages.base import LLMStage

    stages, problems = _build_stages(recipe, spec, output_dir, partition_size, world=True)
    refuse(problems)
    for stage in stages:
        if isinstance(stage, LLMStage):
            stage.provenance = provenance
    return stages


def stage_problems(recipe: dict) -> list[str]:
    """Every problem of the stages' parameters, without touching the machine (input files), so
    that a config's validation reports them with the rest, before anything starts."""
    return _build_stages(recipe, None, None, 256, world=False)[1]
