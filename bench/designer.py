"""Data Designer's own engine against ours on the same config and the same stub server (issue 27).

One config (a category sampler, a uuid in every prompt so no two prompts are alike, one llm-text
column, 64 requests in parallel on both sides) is run by ``data-designer`` in its own venv
(``DataDesigner.create``, in its own process) and by ``python -m recipe designer=...`` (in its own
process), one after the other against one ``recipe.testing.stub_server`` per latency. Printed per
latency: each side's wall time (process start to exit, what a user waits) and the part of it spent
generating (Data Designer's ``create``, our run's ``wall_seconds``), the requests the server saw,
records per second, and the ratio ours / Data Designer's. With ``--batch``, ours runs the config again with
``backend.batch=true`` and then online, priced as gpt-4o, and prints both costs.

    python bench/designer.py [--records 1000] [--latency 0 1] [--batch] [--dd-python PATH] [--smoke]

``--dd-python`` (or ``DD_PYTHON``) is the python of a venv with ``data-designer`` installed
(default ``/work/wt/ddvenv/bin/python``). Data Designer also sends one health-check request per
model before its run and profiles the dataset after it; both are in its wall time, as a user meets them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import banner, report, save, small  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
CONCURRENCY = 64

CONFIG = {
    "model_configs": [{"alias": "writer", "model": "stub-model", "provider": "stub",
                       "inference_parameters": {"temperature": 0.7, "max_tokens": 100,
                                                "max_parallel_requests": CONCURRENCY}}],
    "columns": [
        {"name": "product", "column_type": "sampler", "sampler_type": "category",
         "params": {"values": ["laptop", "phone", "headphones", "camera"], "weights": [4, 3, 2, 1]}},
        {"name": "review_id", "column_type": "sampler", "sampler_type": "uuid", "params": {"short_form": True}},
        {"name": "review", "column_type": "llm-text", "model_alias": "writer",
         "prompt": "Write customer review {{ review_id }} of a {{ product }} in two sentences."},
    ],
}

# Runs in the Data Designer venv: its engine on the config, against the stub; prints one JSON line.
DD_SIDE = r'''
import json, sys, time
start = time.perf_counter()
import data_designer.config as dd
from data_designer.config.models import ModelProvider
from data_designer.interface import DataDesigner
base, records, path, artifacts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
designer = DataDesigner(artifact_path=artifacts, model_providers=[
    ModelProvider(name="stub", endpoint=base, provider_type="openai", api_key="test-key")])
created = time.perf_counter()
result = designer.create(dd.DataDesignerConfigBuilder.from_config(path), num_records=records, dataset_name="bench")
made = result.load_dataset()
done = time.perf_counter()
print(json.dumps({"records": len(made), "reviews": int(made["review"].notna().sum()),
                  "create_seconds": done - created, "import_seconds": created - start}))
'''


def _env(tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", HOME=tmp,
               RECIPE_RUNS_DIR=os.path.join(tmp, "runs"), RECIPE_CACHE_DIR=os.path.join(tmp, "cache"))
    return env


def _timed(command: list[str], env: dict, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{command[0]} {' '.join(command[1:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def data_designer(server, dd_python: str, config: str, records: int, tmp: str) -> dict:
    script = os.path.join(tmp, "dd_side.py")
    Path(script).write_text(DD_SIDE)
    server.reset()
    env = _env(tmp)
    env.pop("PYTHONPATH", None)  # its own venv only
    seconds, proc = _timed([dd_python, script, server.base_url, str(records), config, os.path.join(tmp, "artifacts")],
                           env, timeout=3600)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["records"] == records and out["reviews"] == records, out
    return {"seconds": seconds, **_seen(server), **out}


def _seen(server) -> dict:
    """What the server saw of one side: its requests, the most in flight at once, and the requests
    per second between the first and the last arrival (start-up and shut-down left out)."""
    stats = server.stats()
    arrivals = sorted(stats["arrivals"])
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return {"requests": stats["requests"], "max_in_flight": stats["max_in_flight"],
            "steady_rps": (len(arrivals) - 1) / span if span else float("nan")}


def ours(server, config: str, records: int, tmp: str, *extra: str, out: str = "ours", model: str = "stub-model") -> dict:
    env = _env(tmp)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    server.reset()
    folder = os.path.join(tmp, out)
    seconds, _ = _timed([sys.executable, "-m", "recipe", f"designer={config}", f"target.records={records}",
                         f"output_dir={folder}", "backend=openai", f"backend.api_base={server.base_url}",
                         "backend.api_key=test-key", f"model.name={model}", f"backend.max_concurrency={CONCURRENCY}",
                         "progress=false", *extra], env, timeout=3600)
    made = [json.loads(line) for part in sorted(Path(folder).glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert len(made) == records and all(r.get("review") for r in made), len(made)
    stats = json.loads((Path(folder) / "stats.json").read_text())
    return {"seconds": seconds, **_seen(server), "stats": stats}


def main() -> None:
    from recipe.testing.stub_server import StubServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--batch", action="store_true", help="also the cost with backend.batch=true against online")
    parser.add_argument("--dd-python", default=os.environ.get("DD_PYTHON", "/work/wt/ddvenv/bin/python"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    records = 20 if small() else args.records
    banner("designer")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-designer-") as tmp:
        config = os.path.join(tmp, "reviews.yaml")
        Path(config).write_text(json.dumps(CONFIG))  # JSON is YAML; both sides read the same file
        for latency in args.latency:
            with StubServer(latency=latency) as server:
                side = os.path.join(tmp, f"dd-{latency}")
                os.makedirs(side)
                dd = data_designer(server, args.dd_python, config, records, side)
                side = os.path.join(tmp, f"ours-{latency}")
                os.makedirs(side)
                us = ours(server, config, records, side)
            print(f"latency {latency:g} s, {records} records, {CONCURRENCY} in parallel:")
            print(f"  Data Designer: {dd['seconds']:.1f} s wall ({dd['import_seconds']:.1f} s start-up, "
                  f"{dd['create_seconds']:.1f} s in create), {records / dd['seconds']:.1f} rec/s; server: "
                  f"{dd['requests']} requests, {dd['steady_rps']:.1f} req/s, {dd['max_in_flight']} in flight at most")
            print(f"  recipe:        {us['seconds']:.1f} s wall ({us['stats']['wall_seconds']:.1f} s in the run), "
                  f"{records / us['seconds']:.1f} rec/s; server: {us['requests']} requests, "
                  f"{us['steady_rps']:.1f} req/s, {us['max_in_flight']} in flight at most")
            results.append(report(f"latency {latency:g}: recipe rec/s (vs Data Designer)", records / us["seconds"],
                                  records / dd["seconds"], "rec/s"))
            results.append(report(f"latency {latency:g}: recipe steady req/s (vs DD)", us["steady_rps"],
                                  dd["steady_rps"], "req/s"))
        if args.batch:
            with StubServer(usage=(1000, 500)) as server:  # each run its own cache: no answer is reused
                os.makedirs(os.path.join(tmp, "batch"))
                os.makedirs(os.path.join(tmp, "online"))
                batch = ours(server, config, records, os.path.join(tmp, "batch"), "backend.batch=true",
                             "backend.batch_poll_seconds=0.5", model="gpt-4o")
                online = ours(server, config, records, os.path.join(tmp, "online"), model="gpt-4o")
            assert batch["stats"]["requests"] == online["stats"]["requests"] == records, "every request paid once"
            print(f"gpt-4o prices, 1000 prompt + 500 completion tokens a request: online "
                  f"${online['stats']['cost_usd']:.2f}, backend.batch=true ${batch['stats']['cost_usd']:.2f}")
            results.append(report("batch cost (vs online)", batch["stats"]["cost_usd"], online["stats"]["cost_usd"], "USD"))
    save("designer", results)


if __name__ == "__main__":
    main()
