"""report.html for a big run: time, peak memory and page size against reading the same parts with pyarrow.

    python bench/report.py [--rows N] [--smoke]

The run folder is made in the shape ``python -m recipe recipe=generate`` writes (part files of
256-record partitions, their manifests with per-stage counts, error files, attempts with request
timings, stats.json): running 1M records through the stub first would take over half an hour
(see the scale bench) and measure the pipeline, not the report. Each side runs in its own fresh
process: ``python -m recipe report DIR`` (every record profiled, a 10,000-record sample kept), and
the baseline, ``pyarrow.json.read_json`` over the same part files. Goals: < 60 s, < 1 GiB, HTML < 20 MB.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import banner, report, rows, save  # noqa: E402

PART = 256
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def make_run(folder: Path, n: int) -> None:
    """A finished run's folder of ``n`` records (1% of the inputs failed, 2% filtered)."""
    import hashlib

    rng = random.Random(7)
    (folder / "manifests").mkdir(parents=True)
    (folder / "errors").mkdir()
    (folder / "attempts").mkdir()
    parts, written, failed = (n + PART - 1) // PART, 0, 0
    for part in range(parts):
        count = min(PART, n - written)
        good, bad = [], []
        for i in range(count):
            line = written + i + 1
            rid = hashlib.sha1(f"in.jsonl:{line}".encode()).hexdigest()[:16]
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            good.append({"prompt": f"Question {line}: write one short sentence about {words[:30]}.",
                         "topic": rng.choice(WORDS), "score": rng.randint(1, 5), "quality": round(rng.random(), 3),
                         "meta": {"lang": rng.choice(["en", "fr", "de"]), "tokens": rng.randint(10, 400)},
                         "response": f"An answer about {words}.", "_id": rid, "_parent": None,
                         "_source": f"in.jsonl:{line}"})
        for _ in range(count // 100):
            failed += 1
            bad.append({"_error": {"stage": "generate", "class": "ServerError", "message": "stub: 500",
                                   "where": f"in.jsonl:{failed}"}, "_id": f"{failed:016x}",
                        "record": {"prompt": "failed"}})
        name = f"part-{part:05d}"
        with open(folder / f"{name}.jsonl", "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in good)
        if bad:
            with open(folder / "errors" / f"{name}.jsonl", "w") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in bad)
        filtered = count // 50
        manifest = {"part": part, "records": count, "errors": len(bad), "failures": {"ServerError": len(bad)},
                    "transient": len(bad), "config_hash": "bench", "json_fields": [],
                    "files": [f"{name}.jsonl"] + ([f"errors/{name}.jsonl"] if bad else []),
                    "dropped": {"filtered": filtered, "deduplicated": {},
                                "stages": {"generate": [count + len(bad) + filtered, count + filtered, len(bad)],
                                           "filter": [count + filtered, count, 0]}}}
        (folder / "manifests" / f"{name}.json").write_text(json.dumps(manifest))
        written += count
    minute = int(time.time() // 60) * 60
    timings = {"latency_ms": {str(b): rng.randint(100, 5000) for b in range(90, 140)},
               "tokens": {str(b): rng.randint(100, 5000) for b in range(40, 70)},
               "minutes": {str(minute + 60 * m): [n // 60, 10, 5, 1] for m in range(60)}}
    usage = {"requests": n + failed, "cache_hits": 0, "prompt_tokens": 30 * n, "completion_tokens": 40 * n,
             "timings": timings}
    (folder / "attempts" / "attempt-001.json").write_text(json.dumps(
        {"attempt": 1, "outcome": "completed", "usage": usage, "wall_seconds": 1000.0, "partitions_to_do": parts}))
    (folder / "run.json").write_text(json.dumps({"format": 1, "config_hash": "bench", "identity": {
        "recipe": {"name": "generate"}}, "plan": None}))
    (folder / "stats.json").write_text(json.dumps({"records": n, "failed": failed, "failed_by_class": {
        "ServerError": failed}, "filtered": sum((min(PART, n - p * PART)) // 50 for p in range(parts)),
        "requests": n + failed, "wall_seconds": 1000.0, "attempts": 1, "partitions": parts}))


OURS = """
import json, resource, sys, time
t = time.perf_counter()
from recipe.report import main
code = main([sys.argv[1]])
print(json.dumps({"seconds": time.perf_counter() - t, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "code": code}))
"""

BASELINE = """
import glob, json, resource, sys, time
t = time.perf_counter()
import pyarrow.json as pj
rows = 0
for path in sorted(glob.glob(sys.argv[1] + "/part-*.jsonl")) + sorted(glob.glob(sys.argv[1] + "/errors/part-*.jsonl")):
    rows += pj.read_json(path).num_rows
print(json.dumps({"seconds": time.perf_counter() - t, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": rows}))
"""


def side(code: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"side failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    banner("report")
    n = rows(smoke=2_000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        started = time.perf_counter()
        make_run(folder, n)
        print(f"run folder of {n} records made in {time.perf_counter() - started:.1f} s "
              f"({sum(p.stat().st_size for p in folder.rglob('*')) / 2**20:.0f} MiB)")
        base = side(BASELINE, folder)
        ours = side(OURS, folder)
        size = (folder / "report.html").stat().st_size / 2**20
        results = [report(f"report.html of {n} records (s)", ours["seconds"], base["seconds"], "s"),
                   report("peak RSS (MiB)", ours["rss"], base["rss"], "MiB")]
        print(f"{'report.html size':<48} {size:10.1f} MiB      (goal < 20 MB)")
        print(f"goals: < 60 s {'met' if ours['seconds'] < 60 else 'NOT met'}, < 1 GiB "
              f"{'met' if ours['rss'] < 1024 else 'NOT met'}, < 20 MB {'met' if size < 19.07 else 'NOT met'}")
        save("report", results + [{"label": "html MiB", "value": size}])
    os.environ.get("BENCH_JSON")


if __name__ == "__main__":
    main()
