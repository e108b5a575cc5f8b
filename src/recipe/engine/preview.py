"""``preview=N``: the recipe's whole chain on its first N input records, shown in the terminal,
with an estimate of the full run, before paying for it.

The preview runs each stage in this process, one after the other, on a small list of records
(every explode or fan-out capped at :data:`CAP` children per parent), and measures each stage's
records in and out, requests, tokens and time. Its answers go into the request cache like a run's,
so the full run that follows pays nothing for the records previewed. Nothing is written into the
run folder: the stages get a scratch folder, Hydra's run dir is a temporary one (see
``recipe.cli.main``), and no manifest, attempt or ``stats.json`` is made.

The estimate scales what was seen to the whole input: each stage's records out per record in
(before the cap), requests and tokens per record in, the run's latency at
``backend.max_concurrency`` (and ``backend.rpm``), and the price of the model when it is known.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from recipe.stages.records import ERROR, ID, PARENT, RESERVED, SOURCE, is_error

CAP = 2  # children kept per parent after a stage that fans out
VALUE_CHARS = 160  # a value longer than this is cut in the terminal


@dataclass
class StageSeen:
    """What one stage did to the previewed records."""

    name: str
    records_in: int = 0
    records_out: int = 0  # before the cap
    kept: int = 0  # after the cap
    errors: int = 0
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_by_model: dict = field(default_factory=dict)
    latency_total: float = 0.0  # seconds, summed over the stage's timed request attempts
    latency_count: int = 0
    answered: int = 0  # requests answered (live or from the cache): the full run finds them in the cache
    seconds: float = 0.0


@dataclass
class Preview:
    n: int
    inputs: int  # input records read for the preview (read errors included)
    total_inputs: int | None  # the whole input, when it can be counted
    stages: list[StageSeen]
    records: list[dict]
    errors: list[dict]
    lineage: dict[Any, list[tuple[str, dict]]]
    estimate: dict
    output_dir: str


def _usage() -> dict:
    from recipe.clients.factory import process_stats

    return process_stats().as_dict()


def _latency(timings: dict | None) -> tuple[float, int]:
    from recipe.clients import request_timings as rt

    hist = (timings or {}).get("latency_ms") or {}
    return (sum(rt.bucket_value(k, rt.LATENCY_RATIO) * v for k, v in hist.items()) / 1000.0,
            sum(int(v) for v in hist.values()))


def _answered(timings: dict | None) -> int:
    return sum(int(counts[0]) for counts in ((timings or {}).get("minutes") or {}).values())


def _account(seen: StageSeen, before: dict, after: dict) -> None:
    for key in ("requests", "cache_hits", "prompt_tokens", "completion_tokens"):
        setattr(seen, key, after.get(key, 0) - before.get(key, 0))
    for model, (p, c) in (after.get("tokens_by_model") or {}).items():
        bp, bc = (before.get("tokens_by_model") or {}).get(model, (0, 0))
        if p - bp or c - bc:
            seen.tokens_by_model[model] = (p - bp, c - bc)
    seen.answered = seen.cache_hits + _answered(after.get("timings")) - _answered(before.get("timings"))
    total_after, count_after = _latency(after.get("timings"))
    total_before, count_before = _latency(before.get("timings"))
    seen.latency_total, seen.latency_count = total_after - total_before, count_after - count_before


def _first_records(read_stage: Any, n: int) -> list:
    """The first ``n`` items the read stage yields (error records of bad lines included)."""
    found: list = []
    for part in read_stage(None).to_delayed():  # partition by partition: only what is needed is read
        found += list(part.compute(scheduler="sync"))
        if len(found) >= n:
            break
    return found[:n]


def _input_count(read_stage: Any) -> int | None:
    """Records in the whole input: seeds, JSONL lines or Parquet rows (None when it cannot be counted)."""
    from recipe import storage

    try:
        plan = read_stage.plan()
    except Exception:  # noqa: BLE001 - a source without a plan: no estimate of its size
        return None
    total = 0
    for kind, where in plan:
        if kind == "seeds":
            total += where[1] - where[0]
        elif kind == "jsonl":
            path, start, end, _ = where
            data = storage.read_range(path, start, end)
            total += sum(1 for line in data.split(b"\n") if line.strip())
        elif kind == "parquet":
            import pyarrow.parquet as pq

            path, group = where
            with storage.open_file(path, "rb") as handle:
                total += pq.ParquetFile(handle).metadata.row_group(group).num_rows
        else:
            return None
    return total


def _capped(records_in: list[dict], out: list[dict], cap: int) -> list[dict]:
    """``out`` with at most ``cap`` children per parent among ``records_in`` (records kept in place stay)."""
    parents = {r.get(ID) for r in records_in}
    per_parent: dict[Any, int] = {}
    kept = []
    for record in out:
        parent = record.get(PARENT)
        if not is_error(record) and record.get(ID) not in parents and parent in parents:
            per_parent[parent] = per_parent.get(parent, 0) + 1
            if per_parent[parent] > cap:
                continue
        kept.append(record)
    return kept


def _fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in RESERVED}


def run_preview(cfg: Any, n: int, cap: int = CAP) -> Preview:
    """Preview ``cfg``'s recipe on its first ``n`` records (see the module's docstring)."""
    import dask.bag as db

    from recipe.engine import execute as run_execute
    from recipe.config import identity as run_identity
    from recipe.engine import plan as run_plan
    from recipe.clients.factory import ClientSpec
    from recipe.stages.build import build_stages
    from recipe.stages import chain
    from recipe.stages.io.write import WriteStage

    data = run_plan.checked_data(cfg)
    ident = run_identity.identity(data)
    output_dir = run_identity.run_dir(data)  # only named: the preview writes nothing there
    scratch = tempfile.mkdtemp(prefix="recipe-preview-")
    try:
        spec = ClientSpec.from_config(data)
        stages = build_stages(data["recipe"], spec, scratch, data["dask"]["partition_size"],
                              provenance=bool(data.get("provenance")))
        chain.check(stages)
        plan = run_plan.RunPlan(config=data, output_dir=scratch, ident=ident, config_hash="preview", spec=spec,
                                stages=stages, folder=None, **run_plan.settings(data))
        with contextlib.ExitStack() as stack:
            plan = run_execute.start_local_server(stack, plan)
            return _walk(plan, n, cap, output_dir, db, WriteStage)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _walk(plan: Any, n: int, cap: int, output_dir: str, db: Any, write_stage: type) -> Preview:
    stages = plan.stages
    first, *rest = stages
    if rest and isinstance(rest[-1], write_stage):
        rest = rest[:-1]
    started = time.monotonic()
    items = _first_records(first, n)
    read = StageSeen(first.name, records_in=len(items), seconds=time.monotonic() - started)
    good = [r for r in items if not is_error(r)]
    errors = [r for r in items if is_error(r)]
    read.records_out = read.kept = len(good)
    read.errors = len(errors)
    lineage: dict[Any, list[tuple[str, dict]]] = {r.get(ID): [(first.name, _fields(r))] for r in good}
    seen = [read]
    for stage in rest:
        account = StageSeen(stage.name, records_in=len(good))
        before, started = _usage(), time.monotonic()
        out = list(stage(db.from_sequence(good, npartitions=1)).compute(scheduler="sync")) if good else []
        account.seconds = time.monotonic() - started
        _account(account, before, _usage())
        made = [r for r in out if is_error(r)]
        out = [r for r in out if not is_error(r)]
        account.errors, account.records_out = len(made), len(out)
        errors += made
        kept = _capped(good, out, cap)
        account.kept = len(kept)
        by_id = {r.get(ID): r for r in good}
        for record in kept:
            source = by_id.get(record.get(ID)) or by_id.get(record.get(PARENT))
            added = {k: v for k, v in _fields(record).items() if source is None or source.get(k, ...) != v}
            history = lineage.get(source.get(ID), []) if source is not None else []
            lineage[record.get(ID)] = [*history, (stage.name, added)]
        good = kept
        seen.append(account)
    total = _input_count(first)
    return Preview(n=n, inputs=len(items), total_inputs=total, stages=seen, records=good, errors=errors,
                   lineage=lineage, estimate=estimate(plan, seen, len(items), total), output_dir=output_dir)


def estimate(plan: Any, seen: list[StageSeen], previewed: int, total: int | None) -> dict:
    """The full run's requests, tokens, cost and time, from the rates seen in the preview."""
    from recipe.clients import pricing

    if not previewed or total is None:
        return {"inputs": total}
    spec = plan.spec
    flow = total * (seen[0].records_out / previewed)  # records into the next stage
    requests = prompt = completion = 0.0
    latency_total = latency_count = 0.0
    by_model: dict[str, list[float]] = {}
    asked_now = 0
    acceptance, failures = [], []
    for stage in seen[1:]:
        per_record = (stage.requests + stage.cache_hits) / stage.records_in if stage.records_in else 0.0
        asked = flow * per_record
        requests += asked
        asked_now += stage.answered
        live = stage.requests
        if live:
            prompt += asked * stage.prompt_tokens / live
            completion += asked * stage.completion_tokens / live
            for model, (p, c) in stage.tokens_by_model.items():
                mp, mc = by_model.get(model, [0.0, 0.0])
                by_model[model] = [mp + asked * p / live, mc + asked * c / live]
        latency_total += stage.latency_total
        latency_count += stage.latency_count
        kept_of = stage.records_in - stage.errors
        if kept_of and stage.records_out < kept_of:  # a filter or a dedup dropped records
            acceptance.append((stage.name, stage.records_out, kept_of))
        if stage.errors:
            failures.append((stage.name, stage.errors, stage.records_in))
        flow = flow * (stage.records_out / stage.records_in) if stage.records_in else 0.0
    tokens_known = not requests or any(s.requests for s in seen[1:])
    # the one price table (cost_usd and the budget price the same way)
    prices = pricing.table(plan.models, plan.llm_specs(), batch=spec.batch) if by_model else None
    priced = (prices.total({m: (round(p), round(c)) for m, (p, c) in by_model.items()}) if prices is not None
              else (0.0 if not requests else None))
    mean_latency = latency_total / latency_count if latency_count else None
    seconds = None
    if requests == 0:
        seconds = 0.0
    elif mean_latency is not None:
        seconds = requests * mean_latency / max(1, spec.max_concurrency)
        if spec.rpm:
            seconds = max(seconds, requests / spec.rpm * 60.0)
    return {"inputs": total, "records": round(flow), "requests": round(requests), "cached": asked_now,
            "prompt_tokens": round(prompt) if tokens_known else None,
            "completion_tokens": round(completion) if tokens_known else None,
            "cost_usd": priced, "model": spec.model, "seconds": seconds, "concurrency": spec.max_concurrency,
            "rpm": spec.rpm, "acceptance": acceptance,
            "failures": failures}


# ---- showing it ----------------------------------------------------------------------------------

def _short(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "\\n")
    return repr(text[:VALUE_CHARS] + "…") if len(text) > VALUE_CHARS else repr(text)


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def lines(p: Preview) -> dict[str, list]:
    """The preview's text, section by section (plain lines; the rich view draws the same content)."""
    names = ", ".join(s.name for s in p.stages)
    head = [f"preview: {p.inputs} of {p.total_inputs if p.total_inputs is not None else '?'} input records "
            f"through {names} (nothing written to {p.output_dir})"]
    records = []
    for index, record in enumerate(p.records, 1):
        where = f" (from {record[SOURCE]})" if record.get(SOURCE) else ""
        records.append(f"record {index} of {len(p.records)}: _id {record.get(ID)}{where}")
        for stage, added in p.lineage.get(record.get(ID), []):
            if not added:
                records.append(f"  {stage}: (no field changed)")
            for key, value in added.items():
                records.append(f"  {stage}: {key} = {_short(value)}")
    errors = []
    for record in p.errors:
        info = record.get(ERROR) or {}
        where = f" at {info['where']}" if info.get("where") else ""
        errors.append(f"error in stage {info.get('stage')}{where}: {info.get('class')}: {info.get('message')}")
    table = [("stage", "in", "out", "kept", "errors", "requests", "cached", "tokens", "seconds")]
    for s in p.stages:
        table.append((s.name, str(s.records_in), str(s.records_out), str(s.kept), str(s.errors), str(s.requests),
                      str(s.cache_hits), str(s.prompt_tokens + s.completion_tokens), f"{s.seconds:.2f}"))
    return {"head": head, "records": records, "errors": errors, "table": table, "estimate": estimate_lines(p)}


def estimate_lines(p: Preview) -> list[str]:
    e = p.estimate
    if e.get("inputs") is None:
        return ["estimate: the input's size is unknown, so the full run cannot be estimated"]
    out = [f"estimate for the full run ({e['inputs']} input records, at the rates of this preview):",
           f"  records: about {e['records']}",
           f"  requests: about {e['requests']} ({e['cached']} already answered in the request cache)"]
    if e["prompt_tokens"] is None:
        out.append("  tokens: unknown (every answer of the preview came from the cache)")
    else:
        out.append(f"  tokens: about {e['prompt_tokens'] + e['completion_tokens']} "
                   f"(prompt {e['prompt_tokens']}, completion {e['completion_tokens']})")
    if e["cost_usd"] is None:
        out.append(f"  cost: unknown ({e['model']} has no known price: set model.price.input_per_mtok and "
                   "output_per_mtok)")
    else:
        out.append(f"  cost: about ${e['cost_usd']:.4f}")
    if e["seconds"] is None:
        out.append("  time: unknown (no request was timed)")
    else:
        limit = f"backend.max_concurrency={e['concurrency']}" + (f", backend.rpm={e['rpm']:g}" if e["rpm"] else "")
        out.append(f"  time: about {_seconds(e['seconds'])} of requests at {limit}")
    for name, kept, of in e["acceptance"]:
        out.append(f"  acceptance of {name}: {kept / of:.0%} ({kept} of {of} records kept)")
    for name, failed, of in e["failures"]:
        out.append(f"  failures in {name}: {failed / of:.0%} ({failed} of {of} records became error records)")
    return out


def show(p: Preview, stream: TextIO | None = None) -> None:
    """Print the preview: rich panels and tables on a terminal, plain text otherwise."""
    stream = stream or sys.stdout
    parts = lines(p)
    if not getattr(stream, "isatty", lambda: False)():
        out = [*parts["head"], ""]
        out += parts["records"] or ["no records came out of the chain"]
        if parts["errors"]:
            out += ["", f"errors ({len(parts['errors'])}):", *[f"  {e}" for e in parts["errors"]]]
        widths = [max(len(row[i]) for row in parts["table"]) for i in range(len(parts["table"][0]))]
        out.append("")
        out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                for row in parts["table"]]
        out += ["", *parts["estimate"]]
        stream.write("\n".join(out) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=stream)
    console.print(Text(parts["head"][0], style="bold"))
    for line in parts["records"]:
        console.print(Text(line, style="bold cyan" if line.startswith("record ") else ""))
    if parts["errors"]:
        console.print(Text(f"errors ({len(parts['errors'])})", style="bold red"))
        for line in parts["errors"]:
            console.print(Text("  " + line, style="red"))
    table = Table(*parts["table"][0], title="stages")
    for row in parts["table"][1:]:
        table.add_row(*(Text(c) for c in row))
    console.print(table)
    for line in parts["estimate"]:
        console.print(Text(line, style="bold" if line.startswith("estimate") else ""))
