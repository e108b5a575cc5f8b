"""Hydra's run of one job, on the config the pre-run check composed: composed once, not three times.

``@hydra.main`` composes the config twice for a run (once to read ``hydra.mode``, once to run it),
after :func:`recipe.cli.precheck.precheck` has composed it already; each compose reads and merges
every config file (0.1 s of CPU), which was most of a short run's start-up. A plain run hands the
check's config to Hydra's own job runner instead: ``run_job``, the function Hydra's launchers call,
between the run callbacks ``Hydra.run`` fires. The run folder, ``.hydra/``, the log file, the
working directory and the callbacks are Hydra's own, as before (``tests/test_cli.py`` compares the
config with the one ``Hydra.run`` composes). Sweeps, ``--cfg``, ``--info`` and the help pages still
go through ``@hydra.main``. Only Hydra's public modules are used (``hydra.core.utils.run_job`` is
the launcher plugins' API).
"""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, read_write


def plain_run(cfg: DictConfig) -> bool:
    """Whether ``cfg`` (with its ``hydra`` node) is one job, as ``Hydra.get_mode`` would find it.

    A config that leaves ``hydra.mode`` unset is a run; ``@hydra.main`` then adds the override
    ``hydra.mode=RUN``, and so does this. One that sets MULTIRUN (a user's primary config) is a sweep."""
    from hydra.types import RunMode

    if cfg.hydra.mode is None:
        with read_write(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    return bool(cfg.hydra.mode == RunMode.RUN)


def run_composed(cfg: DictConfig, task_function: Callable[[DictConfig], None]) -> None:
    """Run ``task_function`` as Hydra's one job of ``cfg``; what the job raises is raised here."""
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)  # as Hydra.run's compose does
    callbacks = _Callbacks(cfg)
    config_name = cfg.hydra.job.config_name
    callbacks.on_run_start(config=cfg, config_name=config_name)
    # run_job reads only the callbacks of its context; the config loader is for sweepers
    ran = run_job(hydra_context=HydraContext(config_loader=None, callbacks=callbacks),  # type: ignore[arg-type]
                  task_function=task_function, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
    callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ran)
    _ = ran.return_value  # raises what the job raised


class _Callbacks:
    """The callbacks of ``hydra.callbacks``, told of the run and the job as ``Hydra.run`` tells
    them: in order at a start, in reverse at an end, a callback's own error a warning. Hydra's
    class for this is private (Hydra's internal package), so this is its dozen lines again."""

    def __init__(self, cfg: DictConfig) -> None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        self.callbacks = [instantiate(params) for params in (OmegaConf.select(cfg, "hydra.callbacks") or {}).values()]

    def _notify(self, hook: str, reverse: bool = False, **kwargs: Any) -> None:
        import warnings

        for callback in reversed(self.callbacks) if reverse else self.callbacks:
            try:
                getattr(callback, hook)(**kwargs)
            except Exception as exc:
                warnings.warn(f"Callback {type(callback).__name__}.{hook} raised {type(exc).__name__}: {exc}")

    def on_run_start(self, **kwargs: Any) -> None:
        self._notify("on_run_start", **kwargs)

    def on_run_end(self, **kwargs: Any) -> None:
        self._notify("on_run_end", reverse=True, **kwargs)

    def on_job_start(self, **kwargs: Any) -> None:
        self._notify("on_job_start", **kwargs)

    def on_job_end(self, **kwargs: Any) -> None:
        self._notify("on_job_end", reverse=True, **kwargs)
