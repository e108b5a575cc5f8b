"""Shared bench helpers: ratios against a baseline measured in the same run, and RSS readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager


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
