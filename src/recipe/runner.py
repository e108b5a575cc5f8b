"""``run(cfg)``: build the stages a recipe declares, compute them on Dask, report.

The CLI (``python -m recipe``) and users' code both call this plain function; Hydra only
parses and composes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe import preflight
from recipe.config import defaults
from recipe.config.compose import check, resolved_container, setup
from recipe.config.env_keys import resolved_by_reference
from recipe.errors import ConfigError
from recipe.factory import ClientSpec
from recipe.services import storage


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
        text = (f"{self.records} records, {self.failed} failed, {s.get('requests', 0)} requests "
                f"({s.get('cache_hits', 0)} cached), {s.get('prompt_tokens', 0) + s.get('completion_tokens', 0)} tokens, "
                f"{s.get('wall_seconds', 0):.1f} s")
        resumed = s.get("resumed")
        if resumed:
            text += (f" (resumed, attempt {s.get('attempts')}: {resumed['records']} records and {resumed['failed']} "
                     f"failures in {resumed['partitions']} of {resumed['of_partitions']} partitions were already done; "
                     f"this attempt: {s['this_attempt']['requests']} requests, {s['this_attempt']['wall_seconds']:.1f} s)")
        return text


def _stage_class(target: str):
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as exc:
        raise ConfigError(f"stage target {target!r} not found: {exc}") from None


def build_stages(recipe: dict, spec: ClientSpec, output_dir: str, partition_size: int = 256) -> list:
    """Instantiate each stage of ``recipe['stages']`` in order, injecting the run's client, output
    path and ``dask.partition_size`` where the stage does not set its own."""
    from recipe.stages.base import LLMStage
    from recipe.stages.read import ReadStage
    from recipe.stages.write import WriteStage

    stages = []
    for name, stage_cfg in (recipe.get("stages") or {}).items():
        if not isinstance(stage_cfg, dict) or "_target_" not in stage_cfg:
            raise ConfigError(f"recipe.stages.{name}: needs a _target_ naming a stage class")
        cls = _stage_class(stage_cfg["_target_"])
        inject: dict[str, Any] = {"name": name}
        if issubclass(cls, LLMStage) and not stage_cfg.get("client"):
            inject["client"] = spec
        if issubclass(cls, WriteStage) and not stage_cfg.get("path"):
            inject["path"] = output_dir
        if "output_dir" in getattr(cls, "__dataclass_fields__", {}) and not stage_cfg.get("output_dir"):
            inject["output_dir"] = output_dir  # stages that write beside the results (dedup's removed/)
        if issubclass(cls, ReadStage) and "partition_size" not in stage_cfg:
            inject["partition_size"] = partition_size
        params = {k: v for k, v in stage_cfg.items() if k != "_target_"}
        try:
            stages.append(cls(**{**params, **inject}))
        except TypeError as exc:  # an unknown or missing parameter
            raise ConfigError(f"recipe.stages.{name}: {exc}") from None
    if not stages:
        raise ConfigError("recipe.stages: a recipe needs at least one stage")
    return stages


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
def dask_context(dask_cfg: dict):
    """A distributed Client (existing scheduler or LocalCluster), or the threaded scheduler.

    ``dashboard``: a LocalCluster serves Dask's dashboard on 127.0.0.1 (its address goes to
    stderr), and stages are not fused into one task per partition, so that each shows under its
    own name in the dashboard's progress bars and task stream.
    """
    import dask

    dashboard = bool(dask_cfg.get("dashboard"))
    if dask_cfg.get("address") or dask_cfg.get("n_workers", 0) > 0:
        from distributed import Client, LocalCluster

        if dashboard:
            _require_bokeh()
        with contextlib.ExitStack() as stack:
            if dask_cfg.get("address"):
                client = Client(dask_cfg["address"])
            else:
                # A failed task is our one error line, not distributed's "Compute Failed ...
                # Traceback" from each worker (silence_logs), nor its chatter in this process.
                stack.enter_context(_quiet_distributed())
                with _workers_ignore_ctrl_c():
                    cluster = LocalCluster(n_workers=dask_cfg["n_workers"],
                                           threads_per_worker=dask_cfg.get("threads_per_worker", defaults.THREADS_PER_WORKER),
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
        with dask.config.set(scheduler=dask.threaded.get, num_workers=max(4, dask_cfg.get("threads_per_worker", defaults.THREADS_PER_WORKER))):
            yield None


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


def _snapshot() -> dict:
    from recipe.factory import process_stats
    from recipe.services import batch
    from recipe.stages import progress

    return {"usage": process_stats().as_dict(), "progress": progress.snapshot(), "batches": batch.states()}


def _reset() -> None:
    from recipe.factory import forget_clients, process_stats
    from recipe.services import batch
    from recipe.services.event_loop import reset_cancelled
    from recipe.stages import breaker, progress

    reset_cancelled()
    forget_clients()
    breaker.reset()
    process_stats().reset()
    progress.reset()
    batch.reset()


def _preload() -> None:
    from recipe.services.litellm_setup import preload

    preload()


def _release() -> None:
    """The run is over in this process: its clients go, with their limiters' refresh tasks."""
    from recipe.factory import forget_clients

    forget_clients()


def _stop_in_flight(client, future=None) -> None:
    """Cancel the run's work in flight, here and on every worker, before anything is torn down.

    The records whose requests are cut short are never recorded (see ``failure_record``): they
    were not answered and did not fail. Bounded in time: a stop must not wait on a sick cluster.
    """
    import warnings

    from recipe.services.event_loop import cancel_all

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
    from recipe.services.event_loop import cancelled

    function()
    if client is not None and not cancelled():  # a stopped run already cancelled everything there
        try:
            client.run(function)
        except Exception:  # noqa: BLE001 - workers already gone: nothing left to release
            pass


def _collect(client) -> dict:
    """This attempt's usage summed over this process and every worker, and its progress.

    Committed partitions are merged by part number, not summed: a partition Dask computed twice
    (on one worker or two) counts once.
    """
    from recipe.services.usage import UsageStats

    snaps = [_snapshot()]
    if client is not None:
        snaps += list(client.run(_snapshot).values())
    usage = UsageStats()
    committed: dict[int, tuple[int, int]] = {}
    removed: dict[tuple[str, int], int] = {}
    live = filtered = 0
    batches: dict = {"states": {}}
    for snap in snaps:
        for key, value in (snap.get("batches") or {}).items():
            if key == "states":
                for state, count in value.items():
                    batches["states"][state] = batches["states"].get(state, 0) + count
            else:
                batches[key] = batches.get(key, 0) + value
        usage.merge(snap["usage"])
        committed.update(snap["progress"]["committed"])
        removed.update(snap["progress"].get("deduplicated", {}))  # by (stage, partition), like committed
        live += snap["progress"]["live"]
        filtered += snap["progress"]["filtered"]
    deduplicated: dict[str, int] = {}
    for (stage, _), count in sorted(removed.items()):
        deduplicated[stage] = deduplicated.get(stage, 0) + count
    return {**usage.as_dict(), "filtered": filtered, "deduplicated": deduplicated, "live": live, "committed": committed,
            "batches": batches,
            "records": sum(r for r, _ in committed.values()), "errors": sum(e for _, e in committed.values())}


def _cost(spec: ClientSpec, tokens_by_model: dict) -> float | None:
    """The run's cost from token counts, computed once, where litellm knows the model's price."""
    if not tokens_by_model:
        return None
    from recipe.services.litellm_setup import get_litellm

    from recipe.services.litellm_setup import is_unpriced

    litellm, total = get_litellm(), 0.0
    if spec.batch:  # at the provider's batch price (input/output_cost_per_token_batches)
        from recipe.services.budget import price_for

        for model, (prompt, completion) in tokens_by_model.items():
            price = price_for(spec.provider, model, batch=True)
            if price is None:
                return None
            total += price.cost(prompt, completion)
        return round(total, 6)
    for model, (prompt, completion) in tokens_by_model.items():
        if is_unpriced(f"{spec.provider}/{model}"):
            return None
        try:
            p, c = litellm.cost_per_token(model=f"{spec.provider}/{model}", prompt_tokens=prompt,
                                          completion_tokens=completion)
        except Exception:
            return None
        total += p + c
    return round(total, 6)


class _Watcher:
    """A thread that moves the progress bar and saves this attempt's usage every few seconds.

    The bar counts the records already committed by earlier attempts, the partitions committed
    now, and the records answered so far by partitions in flight, so a first partition of 256
    records moves the bar record by record. The usage saved on the way keeps the account of an
    attempt that is killed before it ends.
    """

    def __init__(self, client, folder, attempt: dict, done_before: int, bar: bool) -> None:
        self.client, self.folder, self.attempt = client, folder, attempt
        self.done_before, self.bar = done_before, bar
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_Watcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        bar = None
        if self.bar:
            from tqdm import tqdm

            bar = tqdm(desc="records", unit="rec", dynamic_ncols=True, file=sys.stderr, initial=self.done_before)
        last_save = time.monotonic()
        try:
            final = False
            while not final:
                final = self.stop.wait(1.0 if bar is not None else 0.5)  # one last update once stopped
                if bar is None and time.monotonic() - last_save < 5:
                    continue
                try:
                    now = _collect(self.client)
                except Exception:
                    continue
                if bar is not None:
                    shown = self.done_before + now["records"] + now["errors"] + now["live"]
                    # never backwards while running (a finished partition is committed a moment later);
                    # at the end, exactly what was committed
                    bar.n = shown - now["live"] if final else max(bar.n, shown)
                    states = now["batches"]["states"]  # batch API: validating, in_progress, finalizing...
                    bar.set_postfix(failed=now["errors"], requests=now["requests"],
                                    tokens=now["prompt_tokens"] + now["completion_tokens"], refresh=False,
                                    **({"batches": " ".join(f"{k}:{v}" for k, v in sorted(states.items()))}
                                       if states else {}))
                    bar.refresh()
                if time.monotonic() - last_save >= 5:
                    last_save = time.monotonic()
                    with contextlib.suppress(OSError):
                        self.folder.save_attempt(self.attempt["attempt"], {**self.attempt, "usage": _usage(now),
                                                                           "outcome": "running"})
        finally:
            if bar is not None:
                bar.close()


def _usage(now: dict) -> dict:
    """An attempt's usage as saved in ``attempts/``: every counter, zero when nothing was sent."""
    from recipe.services.usage import UsageStats

    usage = {**UsageStats().as_dict(), "filtered": 0, "deduplicated": {}, "batches": {}}
    return {k: now.get(k, default) for k, default in usage.items()}


def _build_bag(stages: list, plan: list | None, folder, config_hash: str, retry_failed: bool):
    """The run's graph: the read stage on the run's fixed plan, then each stage; the write stage
    gets only the partitions that are not committed. Returns (bag, partitions to do, kept)."""
    from recipe.stages.read import ReadStage
    from recipe.stages.write import WriteStage

    first, *rest = stages
    bag = first.read(plan) if isinstance(first, ReadStage) and plan is not None else first(None)
    *middle, last = rest if rest else [None]
    for stage in middle:
        bag = stage(bag)
    if isinstance(last, WriteStage):
        todo, kept = folder.todo(bag.npartitions, config_hash, retry_failed)
        sources = plan if plan is not None and len(plan) == bag.npartitions else None
        return last.write(bag, only=todo, config_hash=config_hash, sources=sources), todo, kept, bag.npartitions
    if last is not None:  # no write stage last: everything is computed, nothing can be skipped
        bag = last(bag)
    return bag, list(range(bag.npartitions)), {}, bag.npartitions


def run(cfg: Any, output_dir: str | None = None) -> RunSummary:
    """Run (or continue) the recipe of a composed config; see :func:`_run`.

    However it ends, stages used afterwards in this process (a notebook, a user's own Dask code)
    work again: the stop flag a cancelled run sets is cleared once the run is torn down.
    """
    from recipe.services.event_loop import reset_cancelled

    try:
        return _run(cfg, output_dir)
    finally:
        reset_cancelled()


def _run(cfg: Any, output_dir: str | None = None) -> RunSummary:
    """Run (or continue) the recipe of a composed config. Raises :class:`ConfigError` for user mistakes.

    The run folder is ``output_dir``, else Hydra's run dir (the CLI makes it the run folder),
    else ``<RECIPE_RUNS_DIR or outputs>/<recipe>-<config hash>``. A folder that already holds
    this config's run is continued: committed partitions are kept, the rest is done (and, with
    ``retry_failed``, partitions holding transient failures are done again). ``resume=false``
    clears the run's results first. A folder holding another config's results is refused.
    """
    from recipe import run_identity
    from recipe.run_folder import RunFolder, sum_manifests

    setup()
    check(cfg)
    data = resolved_by_reference(cfg)  # keys stay variable names (EnvKey): the graph never holds one
    ident = run_identity.identity(cfg)
    config_hash = run_identity.config_hash(ident)
    output_dir = (output_dir or data.get("output_dir") or _hydra_output_dir()
                  or str(Path(run_identity.runs_root()) / run_identity.run_name(cfg, ident)))
    spec = ClientSpec.from_config(data)
    preflight.check_backends(data)
    if not storage.is_remote(output_dir):  # a bucket is not made here; its folder needs no mkdir
        preflight.check_writable(output_dir, "output_dir")
    if spec.cache_dir and not spec.cache_url:
        preflight.check_writable(spec.cache_dir, "cache.dir")
    folder = RunFolder(output_dir)
    folder.check(config_hash)  # before anything starts or is written
    if spec.cache_url:  # a cluster-wide cache that is not there is refused before anything starts
        from recipe.factory import open_cache

        open_cache(spec).ping()
    backend = data["backend"]
    started = time.monotonic()
    # Stages first: a bad stage or a missing input is refused before any server or cluster starts.
    from recipe import target

    stages = build_stages(data["recipe"], spec, output_dir,
                          target.partition_size(data.get("target"), data["dask"]["partition_size"]))
    from recipe.stages import chain

    chain.check(stages)  # a field a stage reads that nothing provides: refused before any request
    _mark_counting_stage(stages)
    from recipe.services import budget

    budget.prepare(data, _llm_specs(stages), key="check", attempts=[])  # an unpriced max_usd: refused now
    resume, retry_failed = bool(data.get("resume", True)), bool(data.get("retry_failed", True))
    with folder.locked():
        had_attempts = folder.open(config_hash, ident, resume=resume)
        plan = folder.plan()
        if plan is None and hasattr(stages[0], "plan"):
            plan = stages[0].plan()
            folder.save_plan(plan)
        _, todo, kept, n_partitions = _build_bag(stages, plan, folder, config_hash, retry_failed)
        attempt = {"attempt": folder.new_attempt(), "started": time.time(), "partitions_to_do": len(todo),
                   "partitions_kept": len(kept), "of_partitions": n_partitions}
        folder.save_attempt(attempt["attempt"], {**attempt, "usage": {}, "outcome": "running"})
        ledger_key = f"{config_hash}-{attempt['attempt']}-{uuid.uuid4().hex[:8]}"  # one ledger per attempt
        run_budget = budget.prepare(data, _llm_specs(stages), key=ledger_key, attempts=folder.attempts(),
                                    batch=spec.batch)
        if run_budget is not None:
            spec = _with_changes(stages, spec, budget=run_budget)
        if spec.batch:  # batch ids are recorded in the run folder, so a rerun polls the same batches
            spec = _with_changes(stages, spec, batch_dir=str(Path(output_dir) / "batches"))
        before = sum_manifests(kept)
        now: dict = {}
        outcome = "stopped"
        try:
            if todo or target.wanted(data):  # a target may need more of an earlier attempt's partitions
                _compute(stages, plan, folder, config_hash, retry_failed, data, backend, spec, attempt,
                         before["records"] + before["failed"], now)
            outcome = "completed"
        finally:
            attempt["wall_seconds"] = round(time.monotonic() - started, 3)
            usage = {**_usage(now), "wall_seconds": attempt["wall_seconds"]}
            if usage.get("requests"):
                usage["cost_usd"] = _cost(spec, usage.get("tokens_by_model") or {})
            folder.save_attempt(attempt["attempt"], {**attempt, "usage": usage, "outcome": outcome})
            json_fields = _unify_parquet(output_dir, stages) if todo and outcome == "completed" else None
            stats = _stats(folder, config_hash, spec, attempt, usage, before, had_attempts and bool(kept),
                           json_fields)
            if spec.budget is not None:
                state = now.get("budget_state") or budget.final_state(spec.budget)
                stats["budget"] = budget.report(spec.budget, state)
                budget.forget(spec.budget)
            if spec.batch:
                stats["batch"] = {**(usage.get("batches") or {}),
                                  "recorded": len(list((Path(output_dir) / "batches").glob("*.json")))}
            if now.get("target"):
                stats["target"] = target.finish_report(now["target"], stats)
            folder.save_stats(stats)
    if outcome == "completed" and any(getattr(s, "format", None) == "hf" for s in stages):
        from recipe.stages.hf_dataset import finish  # the dataset card (and the Hub push) once all is written

        finish(output_dir, stats, data)
    records, failed = stats["records"], stats["failed"]
    notes = []
    if (stats.get("target") or {}).get("why_short"):
        notes.append(f"target.records not reached: {stats['target']['why_short']}")
    if stats["cache_errors"]:
        notes.append(stats["cache_error"])
    if records + failed == 0 and not (stats.get("budget") or {}).get("reached"):  # not the input's fault
        notes.append("no records were produced: the input is empty" if data.get("input")
                     else "no records were produced")
    return RunSummary(output_dir=str(output_dir), records=records, failed=failed, stats=stats, notes=notes)


def _budget_reached(spec: ClientSpec, client) -> bool:
    if spec.budget is None:
        return False
    from recipe.services.budget import final_state

    return bool(final_state(spec.budget, client)["reached"])


def _llm_specs(stages: list) -> list:
    from recipe.stages.base import LLMStage

    return [stage.spec for stage in stages if isinstance(stage, LLMStage) and stage.client is not None]


def _with_changes(stages: list, spec: ClientSpec, **changes: Any) -> ClientSpec:
    """The run's spec, and every model stage's, with ``changes`` (the budget, the batch folder):
    the spec carries them to every worker."""
    from recipe.stages.base import LLMStage

    changed = spec.with_overrides(**changes)
    for stage in stages:
        if isinstance(stage, LLMStage) and stage.client is not None:
            stage.client = changed if stage.client == spec else stage.client.with_overrides(**changes)
    return changed


def _mark_counting_stage(stages: list) -> None:
    """The last model stage's answers move the progress bar (earlier ones would count twice)."""
    from recipe.stages.base import LLMStage

    llm = [stage for stage in stages if isinstance(stage, LLMStage)]
    if llm:
        llm[-1].counts_progress = True


def _compute(stages, plan, folder, config_hash, retry_failed, data, backend, spec, attempt, done_before,
             now: dict) -> None:
    """Start the server and cluster the run needs, compute the partitions to do; ``now`` gets the
    attempt's usage, also when it stops part-way (what was sent is counted)."""
    with contextlib.ExitStack() as stack:
        if backend.get("start_local_server") and not backend.get("api_base"):
            from recipe.services.llamacpp_server import LlamaCppServer

            server = stack.enter_context(LlamaCppServer(backend.get("model_path"),
                                                        n_ctx=spec.context_length or defaults.LOCAL_CONTEXT_LENGTH,
                                                        alias=spec.model))
            local = spec.with_overrides(api_base=server.base_url,
                                        endpoint_id=f"llamacpp://{Path(server.model_path).name}")
            for stage in stages:
                if getattr(stage, "client", None) == spec:
                    stage.client = local
        client = stack.enter_context(dask_context(data["dask"]))
        stack.callback(_run_everywhere, client, _release)  # before the client closes
        _reset()
        if client is not None:
            from recipe.services.cluster_limits import enable_cluster_limits

            client.run(_reset)
            client.run(_preload)  # each worker imports litellm while the first partitions are read
            enable_cluster_limits(client)
        bag, _, _, _ = _build_bag(stages, plan, folder, config_hash, retry_failed)
        with _Watcher(client, folder, attempt, done_before, bool(data.get("progress"))):
            future = None
            try:
                from recipe import target

                if target.wanted(data):
                    now["target"] = target.run_target(data, stages, plan, folder, config_hash, client,
                                                      stopped=lambda: _budget_reached(spec, client))
                elif client is not None:
                    future = client.compute(bag)
                    future.result()
                else:
                    bag.compute()
            except BaseException:  # Ctrl-C, SIGTERM, a run-stopping error: stop the rest at once
                _stop_in_flight(client, future)
                raise
            finally:
                with contextlib.suppress(Exception):
                    now.update(_collect(client))
                if spec.budget is not None:  # read before the cluster (and its scheduler's ledger) goes
                    from recipe.services.budget import final_state

                    with contextlib.suppress(Exception):
                        now["budget_state"] = final_state(spec.budget, client)


def _unify_parquet(output_dir: str, stages: list) -> list | None:
    from recipe.stages.write import WriteStage

    if not any(isinstance(s, WriteStage) and s.format == "parquet" for s in stages):
        return None
    from recipe.stages.parquet import unify_parts

    return unify_parts(output_dir)


def _stats(folder, config_hash: str, spec: ClientSpec, attempt: dict, usage: dict, before: dict,
           resumed: bool, json_fields: list | None) -> dict:
    """``stats.json``: records and failures from the committed partitions, usage summed over attempts."""
    from recipe.run_folder import sum_attempts, sum_manifests

    done = sum_manifests(folder.manifests(config_hash))
    attempts = folder.attempts()
    total = sum_attempts(attempts)
    wall = total["wall_seconds"]
    stats = {
        "records": done["records"], "failed": done["failed"], "failed_by_class": done["failed_by_class"],
        "transient_failed": done["transient_failed"],
        "filtered": total["filtered"], "deduplicated": _deduplicated(attempts),
        "requests": total["requests"], "cache_hits": total["cache_hits"], "retries": total["retries"],
        "rate_limited_429": total["rate_limited"],
        "schema_retries": total["schema_retries"], "schema_failures": total["schema_failures"],
        "structured_by_schema": total["structured_by_schema"],
        "retry_wait_seconds": total["retry_wait_seconds"], "limit_wait_seconds": total["limit_wait_seconds"],
        "request_failures_by_class": total["failures"],
        "cache_errors": usage.get("cache_errors", 0), "cache_error": usage.get("cache_error", ""),
        "prompt_tokens": total["prompt_tokens"], "completion_tokens": total["completion_tokens"],
        "cost_usd": _total_cost(spec, attempts),
        "wall_seconds": wall,
        "records_per_second": round(done["records"] / wall, 3) if wall else None,
        "requests_per_second": round(total["requests"] / wall, 3) if wall else None,
        "attempts": len(attempts),
        "partitions": done["partitions"],
        "json_fields": sorted(set(json_fields or []) | set(done["json_fields"])),
        "config_hash": config_hash,
        "this_attempt": {"attempt": attempt["attempt"], "requests": usage.get("requests", 0),
                         "cache_hits": usage.get("cache_hits", 0),
                         "partitions_written": attempt["partitions_to_do"],
                         "wall_seconds": attempt["wall_seconds"]},
        "resumed": ({"records": before["records"], "failed": before["failed"], "partitions": before["partitions"],
                     "of_partitions": attempt["of_partitions"]} if resumed else None),
    }
    return stats


def _deduplicated(attempts: list[dict]) -> dict:
    """Records removed by each dedup stage, over every attempt."""
    total: dict[str, int] = {}
    for attempt in attempts:
        for stage, count in ((attempt.get("usage") or {}).get("deduplicated") or {}).items():
            total[stage] = total.get(stage, 0) + count
    return total


def _total_cost(spec: ClientSpec, attempts: list[dict]) -> float | None:
    """Each attempt's own cost, summed; null when any attempt's model has no known price."""
    total = 0.0
    for attempt in attempts:
        usage = attempt.get("usage") or {}
        if not usage.get("requests"):
            continue
        cost = usage["cost_usd"] if "cost_usd" in usage else _cost(spec, usage.get("tokens_by_model") or {})
        if cost is None:
            return None
        total += cost
    return round(total, 6)


def _hydra_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return None
