"""Validation by execution: N small Python solutions with their tests, sandboxed, against bare subprocess.run.

N snippets (default 1000; ``--rows N``; smoke: 12): a small function and three asserts, one in
ten of them wrong. Each side runs in a process of its own, started by this script:

- ``baseline``: each snippet run with a bare ``subprocess.run([python, "-c", code])`` (no
  sandbox, no limits), from as many threads as the machine has cores;
- ``stage``: ``recipe.run`` of read -> ValidateStage(kind python) -> write, on the default
  threaded scheduler, the checks in the stage's process pool, each run in the sandbox
  (namespaces, ``nobody``, rlimits, a wall clock, capped output);
- ``loop``: the same stage on one partition in a Dask-style thread, while the process's shared
  event loop ticks every 10 ms: the ticks' lateness, against 5 s (smoke: 1 s) of ticks with no
  checks running (the machine's own noise), shows whether the checks block it.

Both sides must agree on which snippets pass. Reported: wall seconds per side, the ratio to the
baseline, snippets per second, the CPU seconds each side used (its process, its pool and every
process it started: what bounds the wall time on an idle machine, whatever else is running
now), and the event loop's worst lateness.

    python bench/validate.py [--smoke] [--rows N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, rows, save, small  # noqa: E402

IDLE_SECONDS = 1.0 if small() else 5.0  # the event loop's ticks with no checks running (the baseline)

RECIPE = """\
name: validate_bench
stages:
  read:
    _target_: recipe.stages.ReadStage
    path: ${input}
  check:
    _target_: recipe.stages.ValidateStage
    kind: python
    field: code
    tests_field: tests
  write:
    _target_: recipe.stages.WriteStage
    format: jsonl
"""


def _children_cpu() -> float:
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def snippets(n: int) -> list[dict]:
    out = []
    for i in range(n):
        wrong = i % 10 == 9
        code = f"```python\ndef scale_{i}(x):\n    return x * {i % 7 + 2}{' + 1' if wrong else ''}\n```"
        tests = "\n".join(f"assert scale_{i}({x}) == {x * (i % 7 + 2)}" for x in (0, 3, 11))
        out.append({"id": i, "code": code, "tests": tests})
    return out


def side_baseline(path: str) -> dict:
    """Bare subprocess.run per snippet, ``cores`` at a time: no sandbox at all."""
    from concurrent.futures import ThreadPoolExecutor

    from recipe.stages.validation.checks import extract_code

    records = [json.loads(line) for line in Path(path).read_text().splitlines()]

    def one(record: dict) -> bool:
        program = extract_code(record["code"]) + "\n" + record["tests"]
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=10)
        return done.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        passed = list(pool.map(one, records))
    return {"seconds": time.perf_counter() - start, "passed": [r["id"] for r, ok in zip(records, passed) if ok]}


def side_stage(path: str) -> dict:
    import recipe

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "conf", "recipe")
        conf.mkdir(parents=True)
        (conf / "validate_bench.yaml").write_text(RECIPE)
        cfg = recipe.compose(overrides=["recipe=validate_bench", f"input={path}", f"hydra.searchpath=[file://{conf.parent}]",
                                        "backend=openai", "backend.api_base=http://127.0.0.1:9/v1", "backend.api_key=x",
                                        "model.name=none", "progress=false", "cache.enabled=false"])
        out = Path(tmp, "out")
        start = time.perf_counter()
        summary = recipe.run(cfg, output_dir=str(out))
        seconds = time.perf_counter() - start
        records = [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert summary.failed == 0, summary
    return {"seconds": seconds, "passed": sorted(r["id"] for r in records if r["validation"]["valid"]),
            "errors": {r["id"]: r["validation"]["error"] for r in records if not r["validation"]["valid"]},
            "isolation": records[0]["validation"]["isolation"] if records else []}


def side_loop(path: str) -> dict:
    """The stage's partition in a worker thread while the shared event loop ticks every 10 ms."""
    import asyncio
    import threading

    from recipe.clients.event_loop import run_sync
    from recipe.stages import ValidateStage

    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    stage = ValidateStage(kind="python", field="code", tests_field="tests")
    stage.process_partition(records[:2])  # the pool's workers started
    done = threading.Event()
    lateness: list[float] = []

    async def ticks(until: float | None = None) -> None:
        while not done.is_set() and (until is None or time.perf_counter() < until):
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lateness.append(time.perf_counter() - before - 0.01)

    run_sync(ticks(time.perf_counter() + IDLE_SECONDS))  # the baseline: the same loop, no checks running
    idle = sorted(lateness)
    lateness.clear()
    worker = threading.Thread(target=lambda: (stage.process_partition(records), done.set()))
    start = time.perf_counter()
    worker.start()
    run_sync(ticks())
    worker.join()
    busy = sorted(lateness) or [0.0]
    return {"seconds": time.perf_counter() - start, "ticks": len(busy),
            "late_ms": {"idle p99": 1000 * idle[int(0.99 * (len(idle) - 1))], "idle worst": 1000 * idle[-1],
                        "checks p99": 1000 * busy[int(0.99 * (len(busy) - 1))], "checks worst": 1000 * busy[-1]}}


def main() -> None:
    if "--side" in sys.argv:
        side, path = sys.argv[sys.argv.index("--side") + 1], sys.argv[sys.argv.index("--side") + 2]
        print(json.dumps({"baseline": side_baseline, "stage": side_stage, "loop": side_loop}[side](path)))
        return
    banner("validate")
    n = rows(12, default=1000)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snippets.jsonl")
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in snippets(n)))

        def run(side: str) -> dict:  # each side in a fresh process of its own
            before = _children_cpu()
            done = subprocess.run([sys.executable, __file__, "--side", side, path, *(["--smoke"] if small() else [])],
                                  capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, done.stderr[-3000:]
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["cpu"] = _children_cpu() - before  # the side, its pool and every sandbox, all waited for
            return result

        base, stage, loop = run("baseline"), run("stage"), run("loop")
    differ = sorted(set(base["passed"]) ^ set(stage["passed"]))
    assert not differ, ("the sandbox and bare subprocess.run disagree on which snippets pass: "
                        + "; ".join(f"{i}: {stage['errors'].get(str(i), stage['errors'].get(i))}" for i in differ[:5]))
    print(f"  {n} snippets, {len(stage['passed'])} pass; sandbox isolation: {', '.join(stage['isolation'])}")
    results = [report("bare subprocess.run, no sandbox (baseline)", base["seconds"], base["seconds"], "s"),
               report("recipe.run read -> ValidateStage -> write", stage["seconds"], base["seconds"], "s"),
               report("stage alone, one partition, loop ticking", loop["seconds"], base["seconds"], "s"),
               report("snippets per second, baseline", n / base["seconds"], n / base["seconds"], "/s"),
               report("snippets per second, recipe.run", n / stage["seconds"], n / base["seconds"], "/s"),
               report("CPU seconds, bare subprocess.run (baseline)", base["cpu"], base["cpu"], "s"),
               report("CPU seconds, recipe.run (start-up included)", stage["cpu"], base["cpu"], "s"),
               report("CPU seconds, stage alone", loop["cpu"], base["cpu"], "s")]
    cores = os.cpu_count() or 1
    print(f"on {cores} idle cores the CPU alone bounds recipe.run at {stage['cpu'] / cores:.1f} s "
          f"(baseline {base['cpu'] / cores:.1f} s); the wall times above are on this machine as loaded now")
    late = loop["late_ms"]
    results += [report("event-loop tick lateness p99, no checks (baseline)", late["idle p99"], late["idle p99"], "ms"),
                report("event-loop tick lateness p99, during the checks", late["checks p99"], late["idle p99"], "ms")]
    print(f"event loop: {loop['ticks']} ticks of 10 ms during the checks; worst {late['checks worst']:.1f} ms late "
          f"(with no checks, over {IDLE_SECONDS:.0f} s: worst {late['idle worst']:.1f} ms)")
    save("validate", results)


if __name__ == "__main__":
    main()
