"""An attempt executed: the local server it needs, Dask, the progress thread, the computation.

Each is a named step; however the attempt ends (done, a run-stopping error, Ctrl-C), the work in
flight is cancelled first, then what was sent is counted, then the cluster and server stop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from recipe.engine import accounting as run_accounting
from recipe.engine import cluster as run_dask
from recipe.engine import progress as run_progress
from recipe.engine.attempt import Attempt
from recipe.engine.graph import build_bag
from recipe.engine.plan import RunPlan


def execute(plan: RunPlan, attempt: Attempt) -> None:
    """Start the server and cluster the attempt needs and compute its partitions; ``attempt.now``
    gets its usage, also when it stops part-way (what was sent is counted)."""
    with contextlib.ExitStack() as stack:
        plan = start_local_server(stack, plan)
        client = stack.enter_context(run_dask.open_dask(plan.dask))
        bag = build_bag(plan.stages, attempt.input_plan, attempt.todo, plan.config_hash)
        def prices():  # the killed attempt's cost
            return run_accounting.prices(plan, attempt, loaded_only=True)
        if plan.metrics is not None and plan.metrics.port is not None:
            from recipe.engine import metrics as run_metrics

            run_metrics.serve(stack, plan.metrics.port, plan.metrics.host or "127.0.0.1", client, plan.spec)
        with run_progress.Watcher(client, plan.folder, attempt.record, attempt.done_before, plan.progress, prices):
            compute(plan, attempt, client, bag)


def start_local_server(stack: contextlib.ExitStack, plan: RunPlan) -> RunPlan:
    """``backend.start_local_server``: the embedded llama.cpp server for this run; returns the
    plan with its address in every stage that uses the run's client. A recipe with no stage
    asking the run's model (samplers and transforms only) starts none."""
    if plan.local_server is None:
        return plan
    if not any(getattr(stage, "client", None) == plan.spec for stage in plan.stages):
        return plan
    from recipe.clients.llamacpp_server import LlamaCppServer

    from recipe.config import defaults

    server = stack.enter_context(LlamaCppServer(plan.local_server.model_path,
                                                n_ctx=plan.spec.context_length or defaults.LOCAL_CONTEXT_LENGTH,
                                                alias=plan.spec.model))
    _stop_run_if_it_dies(stack, server)
    local = plan.spec.with_overrides(api_base=server.base_url, endpoint_id=f"llamacpp://{Path(server.model_path).name}")
    return plan.with_stage_clients(lambda spec: local if spec == plan.spec else spec, run_spec=local)


def _stop_run_if_it_dies(stack: contextlib.ExitStack, server) -> None:
    """A server that dies under the run stops it at once with one line naming the signal or exit
    code and the fix (:meth:`LlamaCppServer.watch`), instead of every record retrying against a
    closed port. The watcher thread signals this process; the handler raises in the main thread,
    wherever it waits. Off the main thread (a library user's own thread) no handler can be set:
    the records' connection errors then end the run as before."""
    import os
    import signal
    import threading

    from recipe.errors import LocalServerError

    if threading.current_thread() is not threading.main_thread():
        return

    def raise_in_main(signum, frame) -> None:
        raise LocalServerError(server.death or "the embedded llama.cpp server died")

    previous = signal.signal(signal.SIGUSR2, raise_in_main)
    stack.callback(signal.signal, signal.SIGUSR2, previous)  # restored before the server stops
    server.watch(lambda message: os.kill(os.getpid(), signal.SIGUSR2))


def compute(plan: RunPlan, attempt: Attempt, client, bag) -> None:
    """The partitions to do (or the target's waves), on ``client`` or this process's threads."""
    from recipe.engine import target

    now, spec = attempt.now, plan.spec
    future = None
    try:
        if plan.target is not None:
            now["target"] = target.run_target(plan.target, plan.dask, plan.stages, attempt.input_plan, plan.folder,
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
            from recipe.clients.budget import final_state

            with contextlib.suppress(Exception):
                now["budget_state"] = final_state(spec.budget, client)


def _budget_reached(spec, client) -> bool:
    if spec.budget is None:
        return False
    from recipe.clients.budget import final_state

    return bool(final_state(spec.budget, client)["reached"])
