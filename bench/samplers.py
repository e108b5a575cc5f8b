"""Samplers: 1M records of 8 non-person columns written as JSONL through the CLI; persons per second.

A recipe of one ``SampleStage`` (``n`` records; category with weights, subcategory, integer uniform,
a tone conditional on the rating, a rounded gaussian, poisson, datetime, uuid; a constraint) and a
``WriteStage``, run as ``python -m recipe`` (threads, one process). Baseline, measured in the same
run in its own process: a bare numpy loop drawing the same columns with ``numpy.random`` (the
conditional with ``np.where``, the constraint by redrawing) and writing the same JSONL with
``json.dumps`` per record. Reported: wall time of each and their ratio, the CLI's peak RSS, and
persons per second in one process (against Faker called per person, the obvious way).

    python bench/samplers.py [--smoke] [--rows N]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, rows, save  # noqa: E402

CATEGORIES = ["Electronics", "Home", "Books", "Toys", "Sports"]
WEIGHTS = [3, 3, 2, 1, 1]
CHILDREN = {"Electronics": ["headphones", "charger", "speaker"], "Home": ["pan", "vacuum", "sheets"],
            "Books": ["novel", "cookbook"], "Toys": ["blocks", "game"], "Sports": ["mat", "shoes", "bottle"]}
COLUMNS = {
    "category": {"sampler": "category", "values": CATEGORIES, "weights": WEIGHTS},
    "subcategory": {"sampler": "subcategory", "parent": "category", "values": CHILDREN},
    "rating": {"sampler": "uniform", "low": 1, "high": 5, "convert_to": "int"},
    "tone": {"sampler": "category", "values": ["neutral"],
             "conditional": {"rating <= 2": {"values": ["angry", "upset"]}, "rating >= 4": {"values": ["glad"]}}},
    "price": {"sampler": "gaussian", "mean": 40, "stddev": 20, "round": 2},
    "items": {"sampler": "poisson", "mean": 3},
    "day": {"sampler": "datetime", "start": "2024-01-01", "end": "2025-12-31"},
    "review_id": {"sampler": "uuid", "prefix": "R-"},
}
CONSTRAINTS = ["price > 1"]


def cli_run(n: int, folder: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB of the CLI, records written) for ``python -m recipe`` over ``n`` records."""
    import yaml

    conf = folder / "conf"
    (conf / "recipe").mkdir(parents=True)
    recipe = {"name": "bench_samplers", "stages": {
        "sample": {"_target_": "recipe.stages.SampleStage", "n": n, "seed": 1, "columns": COLUMNS,
                   "constraints": CONSTRAINTS},
        "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl"}}}
    (conf / "recipe" / "bench_samplers.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = folder / "out"
    # no model stage: any backend will do (nothing is sent); the embedded server is not started
    args = [sys.executable, "-m", "recipe", "--config-dir", str(conf), "recipe=bench_samplers", f"output_dir={out}",
            "backend=openai", "backend.api_base=http://127.0.0.1:9/v1", "backend.api_key=unused", "progress=false",
            f"dask.partition_size={max(1000, n // 40)}", f"cache.dir={folder / 'cache'}"]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    records = json.loads((out / "stats.json").read_text())["records"]
    return wall, peak, records


BASELINE = r'''
import json, sys, uuid, numpy as np
n, path = int(sys.argv[1]), sys.argv[2]
cats = %(cats)r; weights = np.array(%(weights)r, float); children = %(children)r
rng = np.random.default_rng(1)
category = rng.choice(len(cats), size=n, p=weights / weights.sum())
sub = [children[cats[c]][i] for c, i in zip(category.tolist(), (rng.random(n) * np.array([len(children[cats[c]]) for c in category])).astype(int).tolist())]
rating = rng.integers(1, 6, size=n)
tone = np.where(rating <= 2, np.where(rng.random(n) < 0.5, "angry", "upset"), np.where(rating >= 4, "glad", "neutral"))
price = np.round(rng.normal(40, 20, size=n), 2)
while (bad := price <= 1).any():
    price[bad] = np.round(rng.normal(40, 20, size=bad.sum()), 2)
items = rng.poisson(3, size=n)
day = np.datetime_as_string(np.datetime64("2024-01-01") + rng.integers(0, 731, size=n).astype("timedelta64[D]"))
bits = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
with open(path, "w") as out:
    for c, s, r, t, p, i, d, (a, b) in zip(category.tolist(), sub, rating.tolist(), tone.tolist(), price.tolist(),
                                           items.tolist(), day.tolist(), bits.tolist()):
        record = {"category": cats[c], "subcategory": s, "rating": r, "tone": t, "price": p, "items": i, "day": d,
                  "review_id": "R-" + str(uuid.UUID(int=(a << 64) | b, version=4))}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
''' % {"cats": CATEGORIES, "weights": WEIGHTS, "children": CHILDREN}


def baseline_run(n: int, folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", BASELINE, str(n), str(folder / "baseline.jsonl")], check=True)
    return time.perf_counter() - start


def persons_per_second(n: int) -> tuple[float, float]:
    """(SampleStage persons/s, Faker called per person/s), each in this process."""
    from faker import Faker

    from recipe.stages.io.sample import SampleStage

    stage = SampleStage(name="people", n=n, columns={"who": {"sampler": "person"}})
    stage.sample_range(0, 10)  # the locale's lists, read once per process
    start = time.perf_counter()
    done = 0
    for first in range(0, n, 10_000):
        done += len(stage.sample_range(first, min(n, first + 10_000)))
    ours = done / (time.perf_counter() - start)
    fake = Faker("en_US")
    fake.seed_instance(0)
    m = max(200, n // 20)
    start = time.perf_counter()
    for _ in range(m):
        {"name": fake.name(), "age": fake.random_int(18, 85), "city": fake.city(), "state": fake.state(),
         "occupation": fake.job()}
    return ours, m / (time.perf_counter() - start)


def main() -> None:
    banner("samplers")
    n = rows(smoke=2000)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wall, peak, records = cli_run(n, folder)  # first: the peak RSS of children is the CLI's alone
        base = baseline_run(n, folder)
        assert records == n, (records, n)
        results.append(report(f"CLI, {n} records x 8 columns (s)", wall, base, "s"))
        results.append(report("CLI peak RSS (MiB) vs 500 MiB goal", peak, 500, "MiB"))
        print(f"{'baseline: bare numpy loop + json.dumps (s)':<48} {base:10.1f} s")
    ours, faker = persons_per_second(rows(smoke=5_000, default=200_000))
    results.append(report("persons per second (one process)", ours, faker, "rec/s"))
    print(f"{'baseline: Faker per person (rec/s)':<48} {faker:10.1f} rec/s")
    save("samplers", results)


if __name__ == "__main__":
    main()
