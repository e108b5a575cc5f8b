"""The run's Dask: opened and closed around the work, stopped at once when the run stops.

A distributed Client (an existing scheduler or a LocalCluster on loopback) or, with
``dask.n_workers=0``, the threaded scheduler in this process. Every process of the run (this
one and each worker) starts with clean per-process state and drops its clients at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

from recipe.config.schema import DaskConfig
from recipe.errors import ConfigError


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Worker processes started meanwhile ignore SIGINT (an ignored signal survives exec).

    A terminal's Ctrl-C goes to the whole process group: the workers would each die with a
    traceback while this process is cancelling their work in order. They are stopped by the
    cluster's close instead (and exit on their own if this process dies). A Ctrl-C during the
    cluster's start-up is lost; the next one stops the run.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_distributed():
    """distributed's loggers in this process at ERROR for the cluster's life (then as they were)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def dask_context(dask_cfg: DaskConfig):
    """A distributed Client (existing scheduler or LocalCluster), or the threaded scheduler.

    ``dashboard``: a LocalCluster serves Dask's dashboard on 127.0.0.1 (its address goes to
    stderr), and stages are not fused into one task per partition, so that each shows under its
    own name in the dashboard's progress bars and task stream.
    """
    import dask

    dashboard = bool(dask_cfg.dashboard)
    if dask_cfg.address or dask_cfg.n_workers > 0:
        from distributed import Client, LocalCluster

        if dashboard:
            _require_bokeh()
        with contextlib.ExitStack() as stack:
            if dask_cfg.address:
                client = Client(dask_cfg.address)
            else:
                # A failed task is our one error line, not distributed's "Compute Failed ...
                # Traceback" from each worker (silence_logs), nor its chatter in this process.
                stack.enter_context(_quiet_distributed())
                with _workers_ignore_ctrl_c():
                    cluster = LocalCluster(n_workers=dask_cfg.n_workers,
                                           threads_per_worker=dask_cfg.threads_per_worker,
                                           processes=True, host="127.0.0.1", dashboard_address=None,
                                           silence_logs=logging.CRITICAL,
                                           # the scheduler's HTTP routes on a free loopback port, not
                                           # 8787 (taken by another cluster, it prints a warning)
                                           scheduler_kwargs={"dashboard": dashboard,
                                                             "dashboard_address": "127.0.0.1:0"})
                stack.callback(cluster.close)
                client = Client(cluster)
            stack.callback(client.close)
            if dashboard:
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            stack.enter_context(dask.config.set(_UNFUSED if dashboard else {}))
            yield client
    else:
        if dashboard:
            raise ConfigError("dask.dashboard=true needs a cluster: set dask.n_workers=N (a LocalCluster) "
                              "or dask.address=tcp://...")
        import dask.threaded

        # The function, not the name "threads": for a name Dask imports distributed (~0.8 s of CPU
        # before the first request) to look for a Client that a threaded run never has.
        with dask.config.set(scheduler=dask.threaded.get, num_workers=parallelism(dask_cfg)):
            yield None


def parallelism(dask_cfg: DaskConfig) -> int:
    """Partitions the run computes at once: every worker's threads, or this process's thread pool
    (at least 4 threads: a threaded run has no other way to overlap partitions)."""
    threads = int(dask_cfg.threads_per_worker)
    if dask_cfg.n_workers > 0:
        return int(dask_cfg.n_workers) * threads
    return max(4, threads)


def _cull_only(dsk, keys, **kwargs):
    """Dask's bag/delayed optimisation without fusion: each stage stays its own task."""
    from dask._task_spec import convert_legacy_graph, cull
    from dask.core import flatten

    return cull(convert_legacy_graph(dsk), list(flatten(keys)))


_UNFUSED = {"bag_optimize": _cull_only, "delayed_optimize": _cull_only}


def _require_bokeh() -> None:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise ConfigError("dask.dashboard=true needs bokeh: pip install 'recipe[dashboard]'") from None


@contextlib.contextmanager
def open_dask(dask_cfg: DaskConfig):
    """The run's Dask, each process's state reset for the run and its clients dropped after it."""
    with dask_context(dask_cfg) as client:
        try:
            _reset()
            if client is not None:
                from recipe.clients.cluster_limits import enable_cluster_limits

                client.run(_reset)
                client.run(_preload)  # each worker imports litellm while the first partitions are read
                enable_cluster_limits(client)
            yield client
        finally:
            _run_everywhere(client, _release)  # before the client closes


def _reset() -> None:
    """Each owner of per-run state in this process clears it (:mod:`recipe.process_state`)."""
    from recipe.process_state import new_run

    new_run()


def _preload() -> None:
    from recipe.clients.litellm_setup import preload

    preload()


def _release() -> None:
    """The run is over in this process: its clients go, with their limiters' refresh tasks."""
    from recipe.clients.factory import forget_clients

    forget_clients()


def stop_in_flight(client, future=None) -> None:
    """Cancel the run's work in flight, here and on every worker, before anything is torn down.

    The records whose requests are cut short are never recorded (see ``failure_record``): they
    were not answered and did not fail. Bounded in time: a stop must not wait on a sick cluster.
    """
    import warnings

    from recipe.clients.event_loop import cancel_all

    # litellm creates coroutines it awaits a step later; cancelled in between, each would warn.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    cancel_all()
    if client is None:
        return

    def remote() -> None:
        try:
            if future is not None:
                future.cancel()
            client.run(cancel_all)
        except BaseException:  # noqa: BLE001 - the cluster may already be going down
            pass

    helper = threading.Thread(target=remote, name="recipe-stop", daemon=True)
    helper.start()
    helper.join(5.0)


def _run_everywhere(client, function) -> None:
    from recipe.clients.event_loop import cancelled

    function()
    if client is not None and not cancelled():  # a stopped run already cancelled everything there
        try:
            client.run(function)
        except Exception:  # noqa: BLE001 - workers already gone: nothing left to release
            pass
