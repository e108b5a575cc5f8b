"""An attempt accounted: its usage and cost saved in ``attempts/``, the run's ``stats.json``
summed over every attempt from the committed manifests, and the notes a user should see."""

from __future__ import annotations

import time
from pathlib import Path

from recipe.clients.factory import ClientSpec
from recipe.engine.attempt import Attempt
from recipe.engine.plan import RunPlan


def account(plan: RunPlan, attempt: Attempt) -> dict:
    """Save the attempt's outcome and usage, and write ``stats.json``; returns the stats.

    Runs however the attempt ended: what a stopped attempt sent is counted too."""
    from recipe.engine import progress as run_progress
    from recipe.engine import target
    from recipe.clients import budget

    spec, folder, now, record = plan.spec, plan.folder, attempt.now, attempt.record
    record["wall_seconds"] = round(time.monotonic() - attempt.started, 3)
    usage = {**run_progress.usage(now), "wall_seconds": record["wall_seconds"]}
    if usage.get("requests"):
        usage["cost_usd"] = cost(spec, usage.get("tokens_by_model") or {}, _price(plan))
    folder.save_attempt(record["attempt"], {**record, "usage": usage, "outcome": attempt.outcome})
    completed = attempt.outcome == "completed"
    json_fields = _unify_parquet(plan.output_dir, plan.stages) if attempt.has_work and completed else None
    stats = _stats(folder, plan.config_hash, spec, record, usage, attempt.before, attempt.resumed, json_fields)
    if spec.budget is not None:
        state = now.get("budget_state") or budget.final_state(spec.budget)
        stats["budget"] = budget.report(spec.budget, state)
        budget.forget(spec.budget)
    if spec.batch:
        stats["batch"] = {**(usage.get("batches") or {}),
                          "recorded": len(list((Path(plan.output_dir) / "batches").glob("*.json")))}
    if now.get("target"):
        stats["target"] = target.finish_report(now["target"], stats)
    folder.save_stats(stats)
    return stats


def finish(plan: RunPlan, attempt: Attempt, stats: dict) -> None:
    """What is written once all the records are: a ``format: hf`` dataset's card (and Hub push)."""
    if attempt.outcome == "completed" and any(getattr(s, "format", None) == "hf" for s in plan.stages):
        from recipe.stages.io.hf_dataset import finish as finish_dataset

        finish_dataset(plan.output_dir, stats, plan.data)


def notes(plan: RunPlan, stats: dict) -> list[str]:
    """What the user should know about a finished run that is not an error."""
    found = []
    if (stats.get("target") or {}).get("why_short"):
        found.append(f"target.records not reached: {stats['target']['why_short']}")
    if stats["cache_errors"]:
        found.append(stats["cache_error"])
    if stats["records"] + stats["failed"] == 0 and not (stats.get("budget") or {}).get("reached"):  # not the input's fault
        found.append("no records were produced: the input is empty" if plan.data.get("input")
                     else "no records were produced")
    return found


def cost(spec: ClientSpec, tokens_by_model: dict, price: dict | None = None) -> float | None:
    """The run's cost from token counts, computed once, where the price is known.

    ``price`` is the config's ``model.price`` (USD per million tokens): it prices the run's own
    model here as it does for the budget, before litellm's price map."""
    if not tokens_by_model:
        return None
    from recipe.clients.budget import given_price, price_for
    from recipe.clients.litellm_setup import get_litellm, is_unpriced

    litellm, total = get_litellm(), 0.0
    given = price if given_price(price) is not None else None
    for model, (prompt, completion) in tokens_by_model.items():
        override = given if model == spec.model else None
        if spec.batch or override:  # the given price, or the provider's batch price
            found = price_for(spec.provider, model, override, batch=spec.batch)
            if found is None:
                return None
            total += found.cost(prompt, completion)
            continue
        if is_unpriced(f"{spec.provider}/{model}"):
            return None
        try:
            p, c = litellm.cost_per_token(model=f"{spec.provider}/{model}", prompt_tokens=prompt,
                                          completion_tokens=completion)
        except Exception:
            return None
        total += p + c
    return round(total, 6)


def _unify_parquet(output_dir: str, stages: list) -> list | None:
    from recipe.stages.io.write import WriteStage

    if not any(isinstance(s, WriteStage) and s.format == "parquet" for s in stages):
        return None
    from recipe.stages.io.parquet import unify_parts

    return unify_parts(output_dir)


def _stats(folder, config_hash: str, spec: ClientSpec, attempt: dict, usage: dict, before: dict,
           resumed: bool, json_fields: list | None) -> dict:
    """``stats.json``: records and failures from the committed partitions, usage summed over attempts."""
    from recipe.storage.run_folder import sum_attempts, sum_manifests

    done = sum_manifests(folder.manifests(config_hash))
    attempts = folder.attempts()
    total = sum_attempts(attempts)
    wall = total["wall_seconds"]
    stats = {
        "records": done["records"], "failed": done["failed"], "failed_by_class": done["failed_by_class"],
        "transient_failed": done["transient_failed"],
        "filtered": total["filtered"] if done["filtered"] is None else done["filtered"],
        "deduplicated": _deduplicated(attempts) if done["deduplicated"] is None else done["deduplicated"],
        "requests": total["requests"], "cache_hits": total["cache_hits"], "retries": total["retries"],
        "rate_limited_429": total["rate_limited"], "failovers": total["failovers"],
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


def _total_cost(spec: ClientSpec, attempts: list[dict]) -> float | None:
    """Each attempt's own cost, summed; null when any attempt's model has no known price."""
    total = 0.0
    for attempt in attempts:
        usage = attempt.get("usage") or {}
        if not usage.get("requests"):
            continue
        value = usage["cost_usd"] if "cost_usd" in usage else cost(spec, usage.get("tokens_by_model") or {})
        if value is None:
            return None
        total += value
    return round(total, 6)


def _price(plan: RunPlan) -> dict | None:
    """The config's ``model.price``, which prices the run's own model."""
    return (plan.data.get("model") or {}).get("price")
