"""Throughput under real latency: the `generate` recipe against raw SDK, fixed slices and the ideal.

A stub server on 127.0.0.1 answers each request after a lognormal delay (mean 1.0 s, sigma 0.5).
2000 records (smoke: 100, mean 0.25 s) at concurrency 64 go through:

- raw openai SDK (AsyncOpenAI, max_retries=0) with a rolling asyncio.Semaphore(64): the baseline;
- ours: ``recipe.run`` of the generate recipe (threaded scheduler, partitions of 100, no cache);
- NeMo Curator's slice scheme: slices of 64 sent with ``asyncio.gather``, each awaited whole;
- the ideal: concurrency / mean latency = 64 req/s.

Each is reported in records/s with its ratio to the raw SDK (goal for ours: >= 0.95).

    python bench/latency.py [--smoke]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small, timed  # noqa: E402

from recipe.clients.event_loop import run_sync  # noqa: E402
from recipe.testing.stub_server import StubServer  # noqa: E402

CONCURRENCY = 64
LATENCY = 0.25 if small() else 1.0  # smoke: the same paths in a quarter of the time
PARTITION = 100


async def raw_sdk(base_url: str, prompts: list[str], slices: bool) -> float:
    """records/s of the raw SDK: a rolling semaphore, or fixed slices each awaited whole."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(prompt: str) -> str:
        async with gate:
            r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            return r.choices[0].message.content

    with timed() as t:
        if slices:
            for start in range(0, len(prompts), CONCURRENCY):
                await asyncio.gather(*(one(p) for p in prompts[start:start + CONCURRENCY]))
        else:
            await asyncio.gather(*(one(p) for p in prompts))
    await client.close()
    return len(prompts) / t["seconds"]


def ours(base_url: str, input_path: str, out_dir: str) -> tuple[float, dict, int]:
    import recipe

    cfg = recipe.compose(["backend=vllm", f"backend.api_base={base_url}", "backend.api_key=k", "model.name=m",
                          f"input={input_path}", f"backend.max_concurrency={CONCURRENCY}", "dask.n_workers=0",
                          f"dask.partition_size={PARTITION}",
                          "cache.enabled=false", "progress=false"])
    with timed() as t:
        summary = recipe.run(cfg, output_dir=out_dir)
    parts = len(list(Path(out_dir).glob("part-*")))
    if summary.failed:
        print(f"  note: {summary.failed} records failed: {summary.stats['failed_by_class']}")
    return summary.records / t["seconds"], summary.stats, parts


def main() -> None:
    banner("latency")
    total = 100 if small() else 2000
    prompts = [f"Question number {i}: say something short." for i in range(total)]
    results = []
    with tempfile.TemporaryDirectory() as tmp, StubServer(latency=LATENCY, jitter_sigma=0.5) as server:
        input_path = os.path.join(tmp, "prompts.jsonl")
        with open(input_path, "w") as handle:
            handle.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
        from recipe.clients.litellm_setup import get_litellm

        get_litellm()  # one-time import costs (bench/startup.py measures them) are kept out of the runs
        import dask.bag  # noqa: F401
        import openai  # noqa: F401

        import recipe.engine.runner  # noqa: F401
        import recipe.stages  # noqa: F401

        print(f"{total} records, concurrency {CONCURRENCY}, latency lognormal mean {LATENCY} s sigma 0.5")
        base = run_sync(raw_sdk(server.base_url, prompts, slices=False))
        results.append(report("raw openai SDK, rolling semaphore (baseline)", base, base, "rec/s"))
        print(f"  max in flight at the server: {server.stats()['max_in_flight']}")

        server.reset()
        mine, stats, parts = ours(server.base_url, input_path, os.path.join(tmp, "out"))
        seen = server.stats()
        results.append(report("ours: recipe.run generate", mine, base, "rec/s"))
        print(f"  {parts} partitions, {seen['requests']} requests, max in flight at the server: "
              f"{seen['max_in_flight']}; runner's own figure {stats['records_per_second']} rec/s")

        server.reset()
        sliced = run_sync(raw_sdk(server.base_url, prompts, slices=True))
        results.append(report(f"NeMo Curator scheme: slices of {CONCURRENCY}", sliced, base, "rec/s"))

        ideal = CONCURRENCY / LATENCY
        results.append(report("ideal: concurrency / mean latency", ideal, base, "rec/s"))
    ratio = mine / base
    print(f"goal ours/raw >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'} ({ratio:.2f})")
    save("latency", results)


if __name__ == "__main__":
    main()
