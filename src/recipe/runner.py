"""``run(cfg)``: build the stages a recipe declares, compute them on Dask, report.

The CLI (``python -m recipe``) and users' code both call this plain function; Hydra only
parses and composes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe.config.compose import check, setup
from recipe.config.secrets import resolved_by_reference
from recipe.errors import ConfigError
from recipe.factory import ClientSpec


@dataclass
class RunSummary:
    """What a run produced; ``stats`` is also written to ``output_dir/stats.json``."""

    output_dir: str
    records: int
    failed: int
    stats: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def line(self) -> str:
        s = self.stats
        return (f"{self.records} records, {self.failed} failed, {s.get('requests', 0)} requests "
                f"({s.get('cache_hits', 0)} cached), {s.get('prompt_tokens', 0) + s.get('completion_tokens', 0)} tokens, "
                f"{s.get('wall_seconds', 0):.1f} s")


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
        if dask_cfg.get("address"):
            client = Client(dask_cfg["address"])
            cluster = None
        else:
            cluster = LocalCluster(n_workers=dask_cfg["n_workers"], threads_per_worker=dask_cfg.get("threads_per_worker", 2),
                                   processes=True, host="127.0.0.1",
                                   # the scheduler's HTTP server always starts: a free port, not 8787
                                   scheduler_kwargs={"dashboard": dashboard, "dashboard_address": "127.0.0.1:0"})
            client = Client(cluster)
        try:
            if dashboard:
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            with dask.config.set(_UNFUSED if dashboard else {}):
                yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        if dashboard:
            raise ConfigError("dask.dashboard=true needs a cluster: set dask.n_workers=N (a LocalCluster) "
                              "or dask.address=tcp://...")
        with dask.config.set(scheduler="threads", num_workers=max(4, dask_cfg.get("threads_per_worker", 4))):
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
    from recipe.stages import progress

    return {"usage": process_stats().as_dict(), "progress": progress.snapshot()}


def _reset() -> None:
    from recipe.factory import forget_clients, process_stats
    from recipe.stages import progress

    forget_clients()
    process_stats().reset()
    progress.reset()


def _collect(client) -> dict:
    """Usage and progress summed over this process and every worker."""
    from recipe.services.usage import UsageStats

    snaps = [_snapshot()]
    if client is not None:
        snaps += list(client.run(_snapshot).values())
    usage = UsageStats()
    counts = {"records": 0, "errors": 0, "filtered": 0}
    for snap in snaps:
        usage.merge(snap["usage"])
        for key in counts:
            counts[key] += snap["progress"].get(key, 0)
    return {**usage.as_dict(), **counts}


def _cost(spec: ClientSpec, tokens_by_model: dict) -> float | None:
    """The run's cost from token counts, computed once, where litellm knows the model's price."""
    if not tokens_by_model:
        return None
    from recipe.services.litellm_setup import get_litellm

    from recipe.services.litellm_setup import is_unpriced

    litellm, total = get_litellm(), 0.0
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


def _progress_loop(client, stop: threading.Event, enabled: bool) -> None:
    if not enabled:
        return
    from tqdm import tqdm

    with tqdm(desc="records", unit="rec", dynamic_ncols=True, file=sys.stderr) as bar:
        while not stop.wait(1.0):
            try:
                now = _collect(client)
            except Exception:
                continue
            bar.n = now["records"] + now["errors"]
            bar.set_postfix(failed=now["errors"], requests=now["requests"],
                            tokens=now["prompt_tokens"] + now["completion_tokens"], refresh=False)
            bar.refresh()


def run(cfg: Any, output_dir: str | None = None) -> RunSummary:
    """Run the recipe of a composed config. Raises :class:`ConfigError` for user mistakes."""
    setup()
    check(cfg)
    data = resolved_by_reference(cfg)  # keys stay variable names (EnvKey): the graph never holds one
    output_dir = output_dir or data.get("output_dir") or _hydra_output_dir()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    spec = ClientSpec.from_config(data)
    if spec.cache_url:  # a cluster-wide cache that is not there is refused before anything starts
        from recipe.factory import open_cache

        open_cache(spec).ping()
    backend = data["backend"]
    started = time.monotonic()
    # Stages first: a bad stage or a missing input is refused before any server or cluster starts.
    stages = build_stages(data["recipe"], spec, output_dir, data["dask"]["partition_size"])
    with contextlib.ExitStack() as stack:
        if backend.get("start_local_server") and not backend.get("api_base"):
            from recipe.services.llamacpp_server import LlamaCppServer

            server = stack.enter_context(LlamaCppServer(backend.get("model_path"), n_ctx=backend.get("n_ctx", 2048),
                                                        alias=spec.model))
            local = spec.with_overrides(api_base=server.base_url,
                                        endpoint_id=f"llamacpp://{Path(server.model_path).name}")
            for stage in stages:
                if getattr(stage, "client", None) == spec:
                    stage.client = local
        client = stack.enter_context(dask_context(data["dask"]))
        _reset()
        if client is not None:
            from recipe.services.cluster_limits import enable_cluster_limits

            client.run(_reset)
            enable_cluster_limits(client)
        bag = None
        for stage in stages:
            bag = stage(bag)
        stop = threading.Event()
        watcher = threading.Thread(target=_progress_loop, args=(client, stop, bool(data.get("progress"))), daemon=True)
        watcher.start()
        try:
            parts = client.compute(bag).result() if client is not None else bag.compute()
        finally:
            stop.set()
            watcher.join()
        totals = _collect(client)
    stats = _stats(parts, totals, time.monotonic() - started, spec)
    with open(Path(output_dir) / "stats.json", "w") as handle:
        json.dump(stats, handle, indent=2)
    records, failed = stats["records"], stats["failed"]
    notes = []
    if records + failed == 0:
        notes.append("no records were produced: the input is empty" if data.get("input")
                     else "no records were produced")
    return RunSummary(output_dir=str(output_dir), records=records, failed=failed, stats=stats, notes=notes)


def _stats(parts: list[dict], totals: dict, wall: float, spec: ClientSpec) -> dict:
    """What ``stats.json`` reports: records from the written parts, requests from the clients."""
    records = sum(p["records"] for p in parts)
    by_class: dict[str, int] = {}
    for part in parts:
        for name, count in part["failures"].items():
            by_class[name] = by_class.get(name, 0) + count
    return {
        "records": records, "failed": sum(by_class.values()), "failed_by_class": by_class,
        "filtered": totals["filtered"],
        "requests": totals["requests"], "cache_hits": totals["cache_hits"], "retries": totals["retries"],
        "rate_limited_429": totals["rate_limited"],
        "retry_wait_seconds": totals["retry_wait_seconds"], "limit_wait_seconds": totals["limit_wait_seconds"],
        "request_failures_by_class": totals["failures"],
        "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
        "cost_usd": _cost(spec, totals["tokens_by_model"]) if totals["requests"] else 0.0,
        "wall_seconds": round(wall, 3),
        "records_per_second": round(records / wall, 3) if wall else None,
        "requests_per_second": round(totals["requests"] / wall, 3) if wall else None,
    }


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    raise ConfigError("output_dir is not set: pass output_dir=... (recipe.compose does not choose one)")
