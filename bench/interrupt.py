"""Stopping: how fast the CLI exits on SIGINT mid-run, and what it leaves behind.

The CLI runs the ``generate`` recipe against the stub server (1 s latency, concurrency 16). Once
40 answers are in, it gets SIGINT; the figure is the time from the signal to its exit, as a
ratio against one request's latency (the baseline: the stop must not wait for the requests in
flight). Also reported: false error records written by the stop (must be 0), and, for a run that
completes, the time from its summary line to its exit, against a bare ``python -c pass``.

    python bench/interrupt.py [--smoke]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small  # noqa: E402

from recipe.testing.stub_server import StubServer  # noqa: E402

LATENCY = 1.0


def cli(server: StubServer, tmp: Path, source: Path, out: str) -> subprocess.Popen:
    env = {**os.environ, "RECIPE_CACHE_DIR": str(tmp / "cache"), "RECIPE_RUNS_DIR": str(tmp / "runs")}
    args = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=stub-model",
            "progress=false", f"input={source}", f"output_dir={tmp / out}", "dask.partition_size=16",
            "backend.max_concurrency=16"]
    return subprocess.Popen([sys.executable, "-m", "recipe", *args], env=env, cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def main() -> None:
    banner("interrupt")
    n = 120 if small() else 300
    results = []
    with tempfile.TemporaryDirectory() as name, StubServer(latency=LATENCY) as server:
        tmp = Path(name)
        source = tmp / "in.jsonl"
        source.write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(n)))

        proc = cli(server, tmp, source, "stopped")
        while server.stats()["status_counts"].get("200", 0) < 40:
            time.sleep(0.05)
        start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.communicate()
        stop = time.perf_counter() - start
        errors = tmp / "stopped" / "errors"
        false_errors = sum(len(p.read_text().splitlines()) for p in errors.glob("*.jsonl")) if errors.exists() else 0
        results.append(report("exit after SIGINT (vs one request's latency)", stop, LATENCY, "s"))
        print(f"{'false error records after SIGINT':<48} {false_errors:10d} (exit code {proc.returncode})")

        server.reset()
        proc = cli(server, tmp, source, "done")
        proc.stdout.readline()  # "output: ..." comes after every part is written
        start = time.perf_counter()
        proc.communicate()
        tail = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = time.perf_counter() - start
        results.append(report("exit after the summary (vs python -c pass)", tail, bare, "s"))
    save("interrupt", results)


if __name__ == "__main__":
    main()
