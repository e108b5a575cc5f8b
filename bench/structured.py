"""Structured output: how many list requests give a well-formed list, per recipe.

Runs the list-making part of ``open_qa``, ``math`` and ``python`` (every stage but the write) on
the embedded SmolLM2-135M (llama.cpp; smoke: the stub server), twice: with ``list_mode=direct``
(NeMo Curator's text reader, the baseline) and with ``list_mode=structured`` (the default: the list
schema constrains decoding, invalid answers are asked again). A list request is one record
reaching a list's generating stage; it is well-formed when the list stage outputs exactly ``n``
items. Reported per recipe: requests, valid the first time, valid after retries, failures, and the
well-formed share of each mode (ratio: structured against direct). Goal: >= 95% structured.

    python bench/structured.py [--smoke] [--recipes=open_qa,math] [recipe.n_macro_topics=5 ...]

Arguments with ``=`` that do not start with ``--`` are overrides for every recipe run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small, timed  # noqa: E402

RECIPES = ["open_qa", "math", "python"]


def measure(name: str, mode: str, backend: list[str], cache_dir: str, extra: list[str]) -> dict:
    """Counts for one recipe in one list mode; every list stage computed in one Dask pass."""
    import dask

    import recipe
    from recipe.config.compose import resolved_container
    from recipe.clients.factory import ClientSpec, process_stats
    from recipe.stages.build import build_stages
    from recipe.engine.cluster import _reset
    from recipe.stages import ParseListStage, WriteStage
    from recipe.stages.records import is_error

    cfg = recipe.compose([f"recipe={name}", f"recipe.list_mode={mode}", *backend, "progress=false",
                          f"cache.dir={cache_dir}", *extra])
    data = resolved_container(cfg)
    stages = build_stages(data["recipe"], ClientSpec.from_config(data), "/nonexistent")
    _reset()
    bag, lists, previous = None, [], None
    for stage in stages:
        if isinstance(stage, WriteStage):
            break
        bag = stage(bag)
        if isinstance(stage, ParseListStage):
            lists.append((stage, previous.name, bag))
        previous = stage
    with dask.config.set(scheduler="threads", num_workers=4), timed() as t:
        outputs = dask.compute(*[b for _, _, b in lists])
    requests = well_formed = failed = 0
    errors: list[str] = []
    for (stage, maker, _), records in zip(lists, outputs):
        good = [r for r in records if not is_error(r)]
        bad = [r for r in records if is_error(r) and r["_error"]["stage"] in (stage.name, maker)]
        requests += len(good) + len(bad)
        failed += len(bad)
        errors += [f"{r['_error']['message'][:160]} | raw: {str(r['_error'].get('raw'))[-80:]!r}" for r in bad]
        well_formed += sum(len(r[stage.output_field or stage.input_field]) == stage.n for r in good)
    usage = process_stats().as_dict()
    counts = usage["structured_by_schema"].get("list", {})
    return {"requests": requests, "well_formed": well_formed, "failed": failed, "seconds": t["seconds"],
            "asked": counts.get("asked", 0), "valid_first": counts.get("valid_first", 0),
            "valid_after_retries": counts.get("valid_after_retries", 0), "invalid": counts.get("invalid", 0),
            "schema_retries": usage["schema_retries"], "model_requests": usage["requests"], "errors": errors}


def main() -> None:
    banner("structured")
    names = RECIPES
    for arg in sys.argv[1:]:
        if arg.startswith("--recipes="):
            names = arg.split("=", 1)[1].split(",")
    counts = (["recipe.n_macro_topics=2", "recipe.n_subtopics=2", "recipe.n_openlines=2", "recipe.n_revisions=1"]
              if small() else [])
    counts += [a for a in sys.argv[1:] if "=" in a and not a.startswith("--")]
    results = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        if small():
            from recipe.testing.stub_server import StubServer

            server = stack.enter_context(StubServer(reply="list"))
            backend = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                       "model.name=stub-model"]
        else:
            from recipe.clients.llamacpp_server import LlamaCppServer

            server = stack.enter_context(LlamaCppServer(n_ctx=2048))
            backend = [f"backend.api_base={server.base_url}", "backend.start_local_server=false", "sampling.seed=1"]
        from recipe.clients.litellm_setup import get_litellm

        get_litellm()
        for name in names:
            extra = [c for c in counts if name == "open_qa" or "revisions" not in c]
            runs = {mode: measure(name, mode, backend, os.path.join(tmp, f"{name}-{mode}"), extra)
                    for mode in ("direct", "structured")}
            d, s = runs["direct"], runs["structured"]
            print(f"{name}: direct (NeMo reader): {d['requests']} list requests, {d['well_formed']} well-formed, "
                  f"{d['failed']} failed, {d['seconds']:.0f} s | structured: {s['requests']} list requests, "
                  f"{s['valid_first']} valid first time, {s['valid_after_retries']} valid after retries, "
                  f"{s['invalid']} failures ({s['schema_retries']} re-asks), {s['well_formed']} well-formed, "
                  f"{s['seconds']:.0f} s")
            for message in s["errors"][:3]:
                print(f"  {name} structured failure: {message}")
            share = {m: 100.0 * r["well_formed"] / r["requests"] if r["requests"] else float("nan")
                     for m, r in runs.items()}
            results.append(report(f"{name}: direct lists well-formed (baseline)", share["direct"], share["direct"], "%"))
            results.append(report(f"{name}: structured lists well-formed", share["structured"], share["direct"], "%"))
            print(f"{name}: goal >= 95% structured: {'met' if share['structured'] >= 95 else 'NOT met'} "
                  f"({share['structured']:.1f}%)")
    save("structured", results)


if __name__ == "__main__":
    main()
