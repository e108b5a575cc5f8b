"""An attempt accounted: its usage and cost saved in ``attempts/``, the run's ``stats.json``
summed over every attempt from the committed manifests, and the notes a user should see."""

from __future__ import annotations

import time

from recipe.config.paths import package_version
from recipe.engine.attempt import Attempt, read_attempts
from recipe.engine.plan import RunPlan
from recipe import storage
from recipe.storage.run_folder import batches_dir


def account(plan: RunPlan, attempt: Attempt) -> dict:
    """Save the attempt's outcome and usage, and write ``stats.json``; returns the stats.

    Runs however the attempt ended: what a stopped attempt sent is counted too."""
    from recipe.engine import progress as run_progress
    from recipe.engine import target
    from recipe.clients import budget

    spec, folder, now, record = plan.spec, plan.folder, attempt.now, attempt.record
    record["wall_seconds"] = round(time.monotonic() - attempt.started, 3)
    def table():  # litellm's map is read only if a cost needs it
        return prices(plan, attempt)
    usage = {**run_progress.usage(now, table), "wall_seconds": record["wall_seconds"]}
    folder.save_attempt(record["attempt"], {**record, "usage": usage, "outcome": attempt.outcome})
    completed = attempt.outcome == "completed"
    json_fields = _unify_parquet(plan.output_dir, plan.stages) if attempt.has_work and completed else None
    stats = _stats(folder, plan.config_hash, table, record, usage, attempt.before, attempt.resumed, json_fields)
    if spec.budget is not None:
        state = now.get("budget_state") or budget.final_state(spec.budget)
        stats["budget"] = budget.report(spec.budget, state)
        budget.forget(spec.budget)
    if spec.batch:
        stats["batch"] = {**(usage.get("batches") or {}),
                          "recorded": len(storage.listdir(batches_dir(plan.output_dir), "*.json"))}
    if now.get("target"):
        stats["target"] = target.finish_report(now["target"], stats)
    folder.save_stats(stats)
    return stats


def finish(plan: RunPlan, attempt: Attempt, stats: dict) -> None:
    """What is written once all the records are: a ``format: hf`` dataset's card (and Hub push)."""
    if attempt.outcome == "completed" and any(getattr(s, "format", None) == "hf" for s in plan.stages):
        from recipe.stages.io.hf_dataset import finish as finish_dataset

        finish_dataset(plan.output_dir, stats, plan.config)


def notes(plan: RunPlan, stats: dict) -> list[str]:
    """What the user should know about a finished run that is not an error."""
    found = []
    if (stats.get("target") or {}).get("why_short"):
        found.append(f"target.records not reached: {stats['target']['why_short']}")
    if stats["cache_errors"]:
        found.append(stats["cache_error"])
    if stats.get("unreadable_attempts"):
        found.append(f"could not read {', '.join(stats['unreadable_attempts'])}: the requests, tokens and cost "
                     "in it are not counted in stats.json (what could be read is)")
    if stats["records"] + stats["failed"] == 0 and not (stats.get("budget") or {}).get("reached"):  # not the input's fault
        found.append(_why_no_records(plan, stats))
    return found


def _why_no_records(plan: RunPlan, stats: dict) -> str:
    """Where the records went when none came out: filtered, deduplicated, or none to begin with."""
    gone = {"filtered out": stats.get("filtered") or 0, **{f"removed as duplicates by {stage}": count
                                                            for stage, count in (stats.get("deduplicated") or {}).items()}}
    said = [f"{count} {what}" for what, count in gone.items() if count]
    if said:
        return f"no records were produced: {', '.join(said)}"
    return "no records were produced: the input is empty" if plan.has_input else "no records were produced"


def prices(plan: RunPlan, attempt: Attempt, loaded_only: bool = False):
    """The attempt's price table (:mod:`recipe.clients.pricing`), built once: the budget's, when
    the run has one, so ``cost_usd`` and the budget's ``spent`` are the same sum.

    ``loaded_only``: None unless litellm is already imported in this process (the progress thread
    of a run whose requests go out on Dask workers does not pay for its import)."""
    if attempt.prices is None:
        from recipe.clients import pricing
        from recipe.clients import litellm_setup

        if loaded_only and not litellm_setup.loaded():
            return None
        attempt.prices = pricing.table(plan.models, plan.llm_specs(), plan.spec.batch)
    return attempt.prices


def _unify_parquet(output_dir: str, stages: list) -> list | None:
    from recipe.stages.io.write import WriteStage

    if not any(isinstance(s, WriteStage) and s.format == "parquet" for s in stages):
        return None
    from recipe.stages.io.parquet import unify_parts

    return unify_parts(output_dir)


def _stats(folder, config_hash: str, table, attempt: dict, usage: dict, before: dict,
           resumed: bool, json_fields: list | None) -> dict:
    """``stats.json``: records and failures from the committed partitions, usage summed over attempts."""
    from recipe.storage.run_folder import sum_manifests
    from recipe.clients.pricing import run_cost

    done = sum_manifests(folder.manifests(config_hash))
    attempts, unreadable = read_attempts(folder)  # engine.attempt's: every count checked
    total = sum_attempts(attempts)
    wall = total["wall_seconds"]
    stats = {
        "records": done["records"], "failed": done["failed"], "failed_by_class": done["failed_by_class"],
        "transient_failed": done["transient_failed"],
        "filtered": total["filtered"] if done["filtered"] is None else done["filtered"],
        "deduplicated": _deduplicated(attempts) if done["deduplicated"] is None else done["deduplicated"],
        "skipped": done["skipped"],
        "requests": total["requests"], "cache_hits": total["cache_hits"], "retries": total["retries"],
        "rate_limited_429": total["rate_limited"], "failovers": total["failovers"],
        "schema_retries": total["schema_retries"], "schema_failures": total["schema_failures"],
        "tool_call_retries": total.get("tool_call_retries", 0), "tool_call_failures": total.get("tool_call_failures", 0),
        "structured_by_schema": total["structured_by_schema"],
        "retry_wait_seconds": total["retry_wait_seconds"], "limit_wait_seconds": total["limit_wait_seconds"],
        "request_failures_by_class": total["failures"],
        "cache_errors": usage.get("cache_errors", 0), "cache_error": usage.get("cache_error", ""),
        "prompt_tokens": total["prompt_tokens"], "completion_tokens": total["completion_tokens"],
        "reasoning_tokens": total.get("reasoning_tokens", 0),  # inside completion_tokens (and cost_usd)
        "estimated_usage": total.get("estimated_usage", 0),  # requests whose usage the server did not report
        "cost_usd": run_cost(attempts, table),
        "wall_seconds": wall,
        "records_per_second": round(done["records"] / wall, 3) if wall else None,
        "requests_per_second": round(total["requests"] / wall, 3) if wall else None,
        "attempts": len(attempts),
        "unreadable_attempts": unreadable,  # not counted: the notes say so
        "partitions": done["partitions"],
        "json_fields": sorted(set(json_fields or []) | set(done["json_fields"])),
        "config_hash": config_hash,
        "recipe_version": package_version(),  # the package that made these results
        "replicas": _replicas(total["replicas"]),
        "this_attempt": {"attempt": attempt["attempt"], "requests": usage.get("requests", 0),
                         "cache_hits": usage.get("cache_hits", 0),
                         "partitions_written": attempt["partitions_to_do"],
                         "wall_seconds": attempt["wall_seconds"]},
        "resumed": ({"records": before["records"], "failed": before["failed"], "partitions": before["partitions"],
                     "of_partitions": attempt["of_partitions"]} if resumed else None),
    }
    return stats


def _replicas(replicas: dict) -> dict:
    """Per endpoint: requests, errors, latency p50 and p99 in seconds (of the answered attempts)."""
    from recipe.clients.usage import latency_percentile

    return {url: {"requests": entry.get("requests", 0), "errors": entry.get("errors", 0),
                  "errors_by_class": entry.get("errors_by_class") or {},
                  "latency_p50": latency_percentile(entry.get("latency") or {}, 0.50),
                  "latency_p99": latency_percentile(entry.get("latency") or {}, 0.99)}
            for url, entry in sorted(replicas.items())}


def _deduplicated(attempts: list[dict]) -> dict:
    """Records removed by each dedup stage, over every attempt."""
    total: dict[str, int] = {}
    for attempt in attempts:
        for stage, count in ((attempt.get("usage") or {}).get("deduplicated") or {}).items():
            total[stage] = total.get(stage, 0) + count
    return total


def sum_attempts(attempts: list[dict]) -> dict:
    """Usage over every attempt: each attempt's own counts, so nothing is counted twice. The
    counters add up as they do across processes (:meth:`UsageStats.merge`, the one sum of usage);
    ``filtered`` and ``wall_seconds`` are the attempt's own."""
    from recipe.clients.usage import UsageStats

    usage, filtered, wall = UsageStats(), 0, 0.0
    for attempt in attempts:
        one = attempt.get("usage") or {}
        usage.merge(one)
        filtered += one.get("filtered", 0) or 0
        wall += one.get("wall_seconds", 0) or 0
    return {**usage.as_dict(), "filtered": filtered, "wall_seconds": round(wall, 3)}
