"""``run(cfg)``: a recipe's run as a short sequence of named steps.

1. :func:`recipe.engine.plan.resolve`: the config checked (one report of every problem) and
   resolved once; the run folder, its identity, the client spec and the stages. Nothing has
   started yet.
2. :func:`recipe.engine.attempt.start`: an attempt opened in the run folder (what is kept, what
   is to do, the budget's ledger).
3. :func:`recipe.engine.execute.execute`: the local server, Dask, the progress thread, the work.
4. :func:`recipe.engine.accounting.account`: the attempt's usage and the run's ``stats.json``.
5. :func:`recipe.report.after_run`: the run folder's ``report.html``.

The CLI (``python -m recipe``) and users' code both call this plain function; Hydra only
parses and composes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipe.stages.build import build_stages  # noqa: F401 - imported from here by users and tests

__all__ = ["RunSummary", "run", "build_stages"]


@dataclass
class RunSummary:
    """What a run produced, over every attempt; ``stats`` is also ``output_dir/stats.json``."""

    output_dir: str
    records: int
    failed: int
    stats: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def budget_reached(self) -> bool:
        """The budget stopped this attempt: rerun with a larger ``budget.*`` to finish the run."""
        return bool((self.stats.get("budget") or {}).get("reached"))

    def line(self) -> str:
        s = self.stats
        text = (f"{counted(self.records, 'record')}, {self.failed} failed, {counted(s.get('requests', 0), 'request')} "
                f"({s.get('cache_hits', 0)} cached), {s.get('prompt_tokens', 0) + s.get('completion_tokens', 0)} tokens, "
                f"{s.get('wall_seconds', 0):.1f} s")
        resumed = s.get("resumed")
        if resumed:
            text += (f" (resumed, attempt {s.get('attempts')}: {resumed['records']} records and {resumed['failed']} "
                     f"failures in {resumed['partitions']} of {resumed['of_partitions']} partitions were already done; "
                     f"this attempt: {s['this_attempt']['requests']} requests, {s['this_attempt']['wall_seconds']:.1f} s)")
        return text

    def failed_line(self) -> str:
        """``1 record failed: see DIR/errors/``."""
        return f"{counted(self.failed, 'record')} failed: see {self.output_dir}/errors/"


def counted(n: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def run(cfg: Any, output_dir: str | None = None) -> RunSummary:
    """Run (or continue) the recipe of a composed config. Raises :class:`ConfigError` for user mistakes.

    The run folder is ``output_dir``, else Hydra's run dir (the CLI makes it the run folder),
    else ``<RECIPE_RUNS_DIR or outputs>/<recipe>-<config hash>``. A folder that already holds
    this config's run is continued: committed partitions are kept, the rest is done (and, with
    ``retry_failed``, partitions holding transient failures are done again). ``resume=false``
    clears the run's results first. A folder holding another config's results is refused.

    However it ends, stages used afterwards in this process (a notebook, a user's own Dask code)
    work again: the stop flag a cancelled run sets is cleared once the run is torn down.
    """
    from recipe.clients.event_loop import reset_cancelled

    try:
        return _run(cfg, output_dir)
    finally:
        reset_cancelled()


def _run(cfg: Any, output_dir: str | None) -> RunSummary:
    from recipe.engine import accounting as run_accounting
    from recipe.engine import attempt as run_attempt
    from recipe.engine import execute as run_execute
    from recipe.engine import plan as run_plan

    from recipe.report import after_run

    plan = run_plan.resolve(cfg, output_dir)
    with plan.folder.locked():
        attempt = run_attempt.start(plan)
        plan = attempt.plan  # the attempt's: its budget ledger and batch folder in the specs
        stopped_by_error = False
        try:
            if attempt.has_work or plan.wants_target:  # a target may need more of an earlier attempt's partitions
                run_execute.execute(plan, attempt)
            attempt.outcome = "completed"
        except Exception:
            stopped_by_error = True
            raise
        finally:
            stats = run_accounting.account(plan, attempt)
            if stopped_by_error:  # an attempt stopped by an error explains itself too
                after_run(plan.output_dir)
    run_accounting.finish(plan, attempt, stats)
    report_note = after_run(plan.output_dir)  # 5. report.html (see recipe.report)
    return RunSummary(output_dir=plan.output_dir, records=stats["records"], failed=stats["failed"], stats=stats,
                      notes=run_accounting.notes(plan, stats) + ([report_note] if report_note else []))
