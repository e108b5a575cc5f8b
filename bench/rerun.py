"""Rerun: the same command again over a run whose partitions are all committed, against the first run.

N records (default 1,000,000; ``--rows N``; smoke: 600) go through the ``generate`` recipe with
``recipe.run`` exactly as the CLI runs it (cache on, the default 256 records per partition, a
2-worker LocalCluster) against a zero-latency stub server. The first run is the baseline. Then:

- the identical run again: every partition is committed, so nothing is computed, no request is
  sent and no cache entry is read;
- the same after removing the manifests of the last 10% of partitions (as if the first run had
  died at 90%): only those partitions are done again, their requests come from the cache.

    python bench/rerun.py [--smoke] [--rows N]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, rows as rows_arg, save, small, stub_overrides, timed, write_prompts  # noqa: E402


def main() -> None:
    import recipe
    from recipe.testing.stub_server import StubServer

    banner("rerun")
    rows = rows_arg(smoke=600)
    workers = 0 if small() else 2
    with tempfile.TemporaryDirectory() as tmp, StubServer() as server:
        os.environ["RECIPE_CACHE_DIR"] = os.path.join(tmp, "cache")
        source = os.path.join(tmp, "in.jsonl")
        write_prompts(source, rows)
        out = Path(tmp) / "out"
        overrides = stub_overrides(server.base_url, source, f"output_dir={out}", f"dask.n_workers={workers}")
        with timed() as first_t:
            first = recipe.run(recipe.compose(overrides))
        assert first.records == rows and first.failed == 0, first.line()
        with timed() as again_t:
            again = recipe.run(recipe.compose(overrides))
        this = again.stats["this_attempt"]
        assert again.records == rows and this["requests"] == 0 and this["cache_hits"] == 0, again.line()
        manifests = sorted((out / "manifests").glob("part-*.json"))
        tail_parts = max(1, len(manifests) // 10)
        for path in manifests[len(manifests) - tail_parts:]:
            path.unlink()
        with timed() as tail_t:
            tail = recipe.run(recipe.compose(overrides))
        redone = tail.stats["this_attempt"]
        assert tail.records == rows and redone["requests"] == 0, tail.line()
    print(f"  {rows} records in {len(manifests)} partitions; first run {first_t['seconds']:.1f} s, "
          f"rerun {again_t['seconds']:.2f} s, rerun of the last {tail_parts} partitions "
          f"{tail_t['seconds']:.1f} s ({redone['cache_hits']} cache hits)")
    results = [report(f"first run, {rows} records (baseline)", first_t["seconds"], first_t["seconds"], "s"),
               report("rerun, every partition committed", again_t["seconds"], first_t["seconds"], "s"),
               report("rerun, last 10% of partitions not committed", tail_t["seconds"], first_t["seconds"], "s")]
    save("rerun", results)


if __name__ == "__main__":
    main()
