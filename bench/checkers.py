"""Starting ValidateStage's pool of checkers: forked from a forkserver (ours) against spawned (before).

Each side is a process of its own, started by this script: it opens the checkers' pool
(``recipe.stages.validation.checks.pool``) with W workers (default: 2, 8 and 32; smoke: 2), keeps
every worker busy at once with one 0.2 s task each (so all W start), shuts the pool down and stops
the forkserver, then reports its wall seconds and the CPU seconds of itself and every process it
started. The baseline side starts the same pool with the ``spawn`` context the pool used before.
Each ratio is ours / spawned: under 1 is cheaper.

    python bench/checkers.py [--smoke] [--workers 2 8 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small  # noqa: E402


def side(method: str, workers: int) -> dict:
    import multiprocessing
    import multiprocessing.forkserver

    from recipe.stages.validation import checks

    if method == "spawn":  # the start method the pool had before
        checks._start_method = lambda: multiprocessing.get_context("spawn")
    start = time.perf_counter()
    pool = checks.pool(workers)
    for future in [pool.submit(time.sleep, 0.2) for _ in range(workers)]:
        future.result()
    pool.shutdown(wait=True)
    multiprocessing.forkserver._forkserver._stop()  # reaped here, so its workers' CPU is counted
    seconds = time.perf_counter() - start
    cpu = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for field in ("ru_utime", "ru_stime"))
    return {"seconds": seconds, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--side", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side[0], int(args.side[1]))))
        return
    banner("checkers")
    results = []
    for workers in args.workers or ([2] if small() else [2, 8, 32]):
        sides = {}
        for method in ("spawn", "forkserver"):
            done = subprocess.run([sys.executable, __file__, "--side", method, str(workers)], capture_output=True,
                                  text=True, check=True)
            sides[method] = json.loads(done.stdout)
        base, ours = sides["spawn"], sides["forkserver"]
        results += [report(f"{workers} checkers, wall, spawned (baseline)", base["seconds"], base["seconds"], "s"),
                    report(f"{workers} checkers, wall, forkserver", ours["seconds"], base["seconds"], "s"),
                    report(f"{workers} checkers, CPU, spawned (baseline)", base["cpu"], base["cpu"], "s"),
                    report(f"{workers} checkers, CPU, forkserver", ours["cpu"], base["cpu"], "s")]
    save("checkers", results)


if __name__ == "__main__":
    main()
