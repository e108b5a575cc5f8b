"""The request cache: a cold run of the generate recipe against the same run fully cached.

5000 records (smoke: 100) against a stub server with 1.0 s latency at concurrency 64, the cache
in a temp dir. The cold run is the baseline; the second, identical run must send 0 requests
(checked with the stub server's counters). Reported: wall time of each and records/s, whose
ratio is the speedup (goal: >= 20x).

    python bench/cache.py [--smoke]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small, timed  # noqa: E402

from recipe.testing.stub_server import StubServer  # noqa: E402


def run_once(base_url: str, input_path: str, cache_dir: str, out_dir: str):
    import recipe

    cfg = recipe.compose(["backend=openai", f"backend.api_base={base_url}", "backend.api_key=k", "model.name=m",
                          f"input={input_path}", "backend.max_concurrency=64", "cache.enabled=true",
                          f"cache.dir={cache_dir}", "progress=false"])
    with timed() as t:
        summary = recipe.run(cfg, output_dir=out_dir)
    return t["seconds"], summary


def main() -> None:
    banner("cache")
    total = 100 if small() else 5000
    results = []
    with tempfile.TemporaryDirectory() as tmp, StubServer(latency=1.0) as server:
        input_path = os.path.join(tmp, "prompts.jsonl")
        with open(input_path, "w") as handle:
            handle.writelines(json.dumps({"prompt": f"Question {i}: say something."}) + "\n" for i in range(total))
        from recipe.clients.litellm_setup import get_litellm

        get_litellm()  # the one-time import would otherwise inflate the cold run and the speedup
        cache_dir = os.path.join(tmp, "cache")
        cold, first = run_once(server.base_url, input_path, cache_dir, os.path.join(tmp, "cold"))
        cold_requests = server.stats()["requests"]
        server.reset()
        warm, second = run_once(server.base_url, input_path, cache_dir, os.path.join(tmp, "warm"))
        warm_requests = server.stats()["requests"]
        print(f"{total} records, latency 1.0 s, concurrency 64; cold run: {cold_requests} requests, "
              f"{first.records} records; cached run: {warm_requests} requests, {second.stats['cache_hits']} "
              f"cache hits, {second.records} records")
        assert first.records == total and second.records == total, (first.line(), second.line())
        assert warm_requests == 0 and second.stats["requests"] == 0, f"cached run sent {warm_requests} requests"
        results.append(report("cold run: wall", cold * 1000, cold * 1000, "ms"))
        results.append(report("cached run: wall", warm * 1000, cold * 1000, "ms"))
        results.append(report("cold run (baseline)", total / cold, total / cold, "rec/s"))
        results.append(report("cached run: ratio = speedup", total / warm, total / cold, "rec/s"))
    speedup = cold / warm
    print(f"goal speedup >= 20x: {'met' if speedup >= 20 else 'NOT met'} ({speedup:.1f}x)")
    save("cache", results)


if __name__ == "__main__":
    main()
