"""Shared bench helpers: ratios against a baseline measured in the same run, and RSS readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import ExitStack, contextmanager


def banner(name: str) -> None:
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("litellm", "openai", "dask", "distributed", "hydra-core")}
    print(f"# bench {name} | {time.strftime('%Y-%m-%d')} | {platform.machine()} {os.cpu_count()} cores | "
          f"Python {platform.python_version()} | " + " ".join(f"{k} {v}" for k, v in versions.items()))


def report(label: str, value: float, baseline: float, unit: str) -> dict:
    ratio = value / baseline if baseline else float("nan")
    print(f"{label:<48} {value:10.1f} {unit:<8} ratio {ratio:5.2f}")
    return {"label": label, "value": value, "baseline": baseline, "ratio": ratio, "unit": unit}


@contextmanager
def timed():
    box = {}
    start = time.perf_counter()
    yield box
    box["seconds"] = time.perf_counter() - start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(name: str, results: list[dict]) -> None:
    path = os.environ.get("BENCH_JSON")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"bench": name, "results": results}) + "\n")


def small() -> bool:
    """Smoke mode for tests: tiny counts, same code paths."""
    return "--smoke" in sys.argv


class Clusters:
    """The run's Dask cluster, opened with ``recipe.engine.cluster.dask_context`` as ``recipe.run`` opens it.

    A full run starts a fresh cluster for every measured run (each run's own peak RSS and start);
    with ``shared`` (smoke mode) the first cluster opened serves every later run too, so its
    start-up and the workers' imports (litellm, s3fs, pandas: seconds of CPU each) are paid once.
    """

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self._stack = ExitStack()
        self._client = None

    def __enter__(self) -> "Clusters":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextmanager
    def open(self, dask_cfg):
        from recipe.engine.cluster import dask_context

        if not self.shared:
            with dask_context(dask_cfg) as client:
                yield client
            return
        if self._client is None:
            self._client = self._stack.enter_context(dask_context(dask_cfg))
        yield self._client


def rows(smoke: int, default: int = 1_000_000) -> int:
    """How many records: ``smoke`` in smoke mode, else ``--rows N``, else ``default``."""
    if small():
        return smoke
    return int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else default


def write_prompts(path: str, rows: int) -> None:
    """``rows`` prompt records in JSONL, streamed (the records are never held)."""
    with open(path, "w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"prompt": f"Question {i}: write one short sentence about the number {i}."}))
            handle.write("\n")


def stub_overrides(base_url: str, source: str, *extra: str) -> list[str]:
    """The generate recipe over ``source`` against a stub server, as the rerun and scale benches run it."""
    return ["backend=vllm", f"backend.api_base={base_url}", "backend.api_key=k", "model.name=m",
            f"input={source}", "backend.max_concurrency=64", "progress=false", *extra]
