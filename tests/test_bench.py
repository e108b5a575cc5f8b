"""Smoke runs of every bench script: each must exit 0 and print its results as ratio lines.

``--smoke`` uses tiny counts but the same code paths as the full-size benchmarks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import run_script

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = ["overhead.py", "latency.py", "startup.py", "cache.py", "scale.py", "rerun.py", "structured.py",
           "interrupt.py", "dedup.py", "dedup.py --exact", "spend.py", "scale.py --s3", "samplers.py", "validate.py", "report.py", "checkers.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke(script):
    env = {k: v for k, v in os.environ.items() if k != "BENCH_JSON"}  # never append to the lead's results
    name, *options = script.split()
    proc = run_script(BENCH / name, "--smoke", *options, cwd=BENCH.parent, env=env, timeout=300)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("# bench "), proc.stdout[:500]
    ratios = [line for line in proc.stdout.splitlines() if re.search(r"\bratio\s+-?(\d+\.\d+|nan)\b", line)]
    assert ratios, f"{script} printed no ratio lines:\n{proc.stdout[-2000:]}"
