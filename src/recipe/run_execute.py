"""An attempt executed: the local server it needs, Dask, the progress thread, the computation.

Each is a named step; however the attempt ends (done, a run-stopping error, Ctrl-C), the work in
flight is cancelled first, then what was sent is counted, then the cluster and server stop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from recipe import run_accounting, run_dask, run_progress
from recipe.run_attempt import Attempt
from recipe.run_plan import RunPlan


def _until_last(stages: list, input_plan: list | None):
    """The graph of every stage but the last (the read stage on the run's fixed plan), and the last
    stage (None for a one-stage recipe)."""
    from recipe.stages.read import ReadStage

    first, *rest = stages
    bag = first.read(input_plan) if isinstance(first, ReadStage) and input_plan is not None else first(None)
    *middle, last = rest if rest else [None]
    for stage in middle:
        bag = stage(bag)
    return bag, last


def partitions(stages: list, input_plan: list | None, folder, config_hash: str,
               retry_failed: bool) -> tuple[list[int], dict, int]:
    """(partitions to do, the committed ones kept, of how many), from the run folder's manifests."""
    from recipe.stages.write import WriteStage

    bag, last = _until_last(stages, input_plan)
    if isinstance(last, WriteStage):
        todo, kept = folder.todo(bag.npartitions, config_hash, retry_failed)
        return todo, kept, bag.npartitions
    return list(range(bag.npartitions)), {}, bag.npartitions  # no write stage last: nothing can be skipped


def build_bag(stages: list, input_plan: list | None, todo: list[int], config_hash: str):
    """The run's graph; the write stage gets only the partitions ``todo`` (the attempt's, so the
    manifests are not read again). Built anew for the computation: the stages' specs carry what
    the attempt added (its budget ledger, its batch folder)."""
    from recipe.stages.write import WriteStage

    bag, last = _until_last(stages, input_plan)
    if isinstance(last, WriteStage):
        sources = input_plan if input_plan is not None and len(input_plan) == bag.npartitions else None
        return last.write(bag, only=todo, config_hash=config_hash, sources=sources)
    return bag if last is None else last(bag)


def execute(plan: RunPlan, attempt: Attempt) -> None:
    """Start the server and cluster the attempt needs and compute its partitions; ``attempt.now``
    gets its usage, also when it stops part-way (what was sent is counted)."""
    with contextlib.ExitStack() as stack:
        start_local_server(stack, plan)
        client = stack.enter_context(run_dask.open_dask(plan.dask))
        bag = build_bag(plan.stages, attempt.input_plan, attempt.todo, plan.config_hash)
        prices = lambda: run_accounting.prices(plan, attempt, loaded_only=True)  # the killed attempt's cost
        with run_progress.Watcher(client, plan.folder, attempt.record, attempt.done_before, plan.progress, prices):
            compute(plan, attempt, client, bag)


def start_local_server(stack: contextlib.ExitStack, plan: RunPlan) -> None:
    """``backend.start_local_server``: the embedded llama.cpp server for this run, its address
    given to every stage that uses the run's client."""
    backend = plan.backend
    if not backend.get("start_local_server") or backend.get("api_base"):
        return
    from recipe.services.llamacpp_server import LlamaCppServer

    from recipe.config import defaults

    server = stack.enter_context(LlamaCppServer(backend.get("model_path"),
                                                n_ctx=plan.spec.context_length or defaults.LOCAL_CONTEXT_LENGTH,
                                                alias=plan.spec.model))
    local = plan.spec.with_overrides(api_base=server.base_url, endpoint_id=f"llamacpp://{Path(server.model_path).name}")
    for stage in plan.stages:
        if getattr(stage, "client", None) == plan.spec:
            stage.client = local


def compute(plan: RunPlan, attempt: Attempt, client, bag) -> None:
    """The partitions to do (or the target's waves), on ``client`` or this process's threads."""
    from recipe import target

    now, spec = attempt.now, plan.spec
    future = None
    try:
        if plan.wants_target:
            now["target"] = target.run_target(plan.data, plan.stages, attempt.input_plan, plan.folder,
                                              plan.config_hash, client, stopped=lambda: _budget_reached(spec, client))
        elif client is not None:
            future = client.compute(bag)
            future.result()
        else:
            bag.compute()
    except BaseException:  # Ctrl-C, SIGTERM, a run-stopping error: stop the rest at once
        run_dask.stop_in_flight(client, future)
        raise
    finally:
        with contextlib.suppress(Exception):
            now.update(run_progress.collect(client))
        if spec.budget is not None:  # read before the cluster (and its scheduler's ledger) goes
            from recipe.services.budget import final_state

            with contextlib.suppress(Exception):
                now["budget_state"] = final_state(spec.budget, client)


def _budget_reached(spec, client) -> bool:
    if spec.budget is None:
        return False
    from recipe.services.budget import final_state

    return bool(final_state(spec.budget, client)["reached"])
