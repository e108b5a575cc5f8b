"""One attempt at a run, opened in its run folder: what earlier attempts committed is kept,
the rest is to do, and the attempt is recorded (``attempts/``) before any work starts."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from recipe.engine.plan import RunPlan
from recipe.storage.run_folder import batches_dir


@dataclass
class Attempt:
    """This attempt's record (saved as it goes), its partitions, and what it has done so far."""

    record: dict  # attempt, started, partitions_to_do, partitions_kept, of_partitions (+ wall_seconds)
    input_plan: list | None  # each partition's input range, fixed by the run's first attempt
    todo: list
    kept: dict
    before: dict  # the records and failures committed by earlier attempts
    resumed: bool
    started: float = field(default_factory=time.monotonic)
    now: dict = field(default_factory=dict)  # this attempt's usage, progress, budget and target states
    outcome: str = "stopped"
    prices: Any = None  # its recipe.clients.pricing.PriceTable, built once where a cost needs it
    plan: Any = None  # the attempt's RunPlan: the run's, with its budget ledger and batch folder in the specs

    @property
    def has_work(self) -> bool:
        return bool(self.todo)

    @property
    def done_before(self) -> int:
        return self.before["records"] + self.before["failed"]


def start(plan: RunPlan) -> Attempt:
    """Open the run folder for a new attempt (under its lock): the folder's partition plan, the
    partitions still to do, the attempt's record, its budget ledger and batch folder."""
    from recipe.engine.graph import partitions
    from recipe.storage.run_folder import sum_manifests
    from recipe.clients import budget, pricing

    started = time.monotonic()
    folder, stages = plan.folder, plan.stages
    had_attempts = folder.open(plan.config_hash, plan.ident, resume=plan.resume)
    input_plan = folder.plan()
    if input_plan is None and hasattr(stages[0], "plan"):
        input_plan = stages[0].plan()
        folder.save_plan(input_plan)
    todo, kept, n_partitions = partitions(stages, input_plan, folder, plan.config_hash, plan.retry_failed)
    record = {"attempt": folder.new_attempt(), "started": time.time(), "partitions_to_do": len(todo),
              "partitions_kept": len(kept), "of_partitions": n_partitions}
    folder.save_attempt(record["attempt"], {**record, "usage": {}, "outcome": "running"})
    ledger_key = f"{plan.config_hash}-{record['attempt']}-{uuid.uuid4().hex[:8]}"  # one ledger per attempt
    prices = None
    if plan.budget is not None:  # the budget and cost_usd price with the same table
        prices = pricing.table(plan.models, plan.llm_specs(), plan.spec.batch)
        run_budget = budget.prepare(plan.budget, plan.models, plan.llm_specs(), key=ledger_key, attempts=read_attempts(folder)[0],
                                    batch=plan.spec.batch, prices=prices)
        plan = plan.with_changes(budget=run_budget)
    if plan.spec.batch:  # batch ids are recorded in the run folder, so a rerun polls the same batches
        plan = plan.with_changes(batch_dir=batches_dir(plan.output_dir))
    return Attempt(record=record, input_plan=input_plan, todo=todo, kept=kept, before=sum_manifests(kept),
                   resumed=had_attempts and bool(kept), started=started, prices=prices, plan=plan)


# What an attempt's account adds to the client's usage (UsageStats): counts, and per-stage counts.
ATTEMPT_COUNTS = ("filtered", "wall_seconds", "cost_usd")
ATTEMPT_NESTED = {"deduplicated": 1}


def read_attempts(folder) -> tuple[list[dict], list[str]]:
    """The run folder's attempt accounts, with every count checked (``usage.readable``: the
    counters' owner), and the names of what could not be read."""
    from functools import partial

    from recipe.clients.usage import readable

    return folder.read_attempts(partial(readable, counts=ATTEMPT_COUNTS, nested=ATTEMPT_NESTED))
