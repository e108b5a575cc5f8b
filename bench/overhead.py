"""Client overhead, measured the way users run: each side in its own process.

One zero-latency stub server on 127.0.0.1. For each concurrency (64, then 1) and each repetition,
these run one after the other, each as a fresh ``python`` process:

- ``raw``: ``openai.AsyncOpenAI(max_retries=0)`` plus an ``asyncio.Semaphore`` (the baseline);
- ``client <provider>``: ``AsyncLiteLLMClient.query_model`` alone, under ``asyncio.run``;
- ``cli <backend>``: ``python -m recipe backend=<backend>`` (the ``generate`` recipe: read ->
  generate -> write) on a JSONL file of as many prompts;
- ``cli vllm, 2 procs`` (concurrency 64 only): the same with ``dask.n_workers=2``.

Two rates per run: ``steady`` is server-side, requests per second between the 10th and the 90th
percentile of arrivals (once running); ``wall`` is requests / the process's whole life, start-up
included. ``first`` is the time from the process's start to its first request at the server.
``CPU per request`` is the CPU (user + system) the side's process tree used between those two
arrivals, divided by the requests in between: on a shared machine it moves much less than the rates.
``server CPU per request`` is the same for the stub server's process: when client and server
together need all the machine's cores, no client-side change can raise the rate.
Every ratio is against the raw SDK of the same repetition; repetitions are interleaved and the
report gives ranges (the machine is shared and noisy).

    python bench/overhead.py [--smoke] [--reps R] [--total N] [--profile]

``--profile`` instead profiles the whole generate pipeline in this process (every thread: the
Dask pool's and the event loop's) and prints where its CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something short."}]
CLIENT_PROVIDERS = ("openai", "hosted_vllm", "nvidia_nim")
CLI_BACKENDS = ("openai", "vllm", "llamacpp", "nim")


# ---- the sides, each run in its own process ------------------------------------------------


async def _raw(base_url: str, total: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            r = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Say something short ({i})."}], max_tokens=16)
            return r.choices[0].message.content

    out = await asyncio.gather(*(one(i) for i in range(total)))
    assert len(out) == total and all(out)
    await client.close()


async def _client(base_url: str, total: int, concurrency: int, provider: str) -> None:
    from recipe.clients.litellm_client import AsyncLiteLLMClient

    client = AsyncLiteLLMClient(provider=provider, api_base=base_url, api_key="k", max_concurrency=concurrency)

    async def one(i: int) -> list[str]:
        return await client.query_model(messages=[{"role": "user", "content": f"Say something short ({i})."}],
                                        model="m", max_tokens=16)

    out = await asyncio.gather(*(one(i) for i in range(total)))
    assert len(out) == total and all(o[0] for o in out)


def side_main(args: argparse.Namespace) -> None:
    if args.side == "raw":
        asyncio.run(_raw(args.base_url, args.total, args.concurrency))
    elif args.side == "client":
        asyncio.run(_client(args.base_url, args.total, args.concurrency, args.target))


def _cli_command(base_url: str, concurrency: int, backend: str, input_path: str, out_dir: str,
                 workers: int) -> list[str]:
    overrides = [f"backend={backend}", f"backend.api_base={base_url}", "backend.api_key=k", "model.name=m",
                 f"input={input_path}", f"backend.max_concurrency={concurrency}", "backend.rpm=null",
                 f"dask.n_workers={workers}", "cache.enabled=false", "progress=false", f"output_dir={out_dir}"]
    return [sys.executable, "-m", "recipe", *overrides]


# ---- the driver ----------------------------------------------------------------------------


def _steady(arrivals: list[float]) -> float:
    """Requests per second between the 10th and 90th percentile of arrivals."""
    arrivals = sorted(arrivals)
    lo, hi = len(arrivals) // 10, len(arrivals) - 1 - len(arrivals) // 10
    span = arrivals[hi] - arrivals[lo]
    return (hi - lo) / span if span > 0 else float("nan")


def _cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """CPU seconds used by the side's process tree at time ``when`` (linear between samples)."""
    before = [s for s in samples if s[0] <= when]
    after = [s for s in samples if s[0] >= when]
    if not before or not after:
        return (before or after)[-1 if before else 0][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


def _run_side(server, command: list[str], total: int, env: dict) -> dict:
    """Run one side; its CPU is sampled (process tree, user + system) to give CPU per steady request."""
    import psutil

    server.reset()
    samples: list[tuple[float, float]] = []
    server_samples: list[tuple[float, float]] = []  # the stub's own CPU: is the server the bottleneck?
    stub = psutil.Process(server.pid)
    with tempfile.TemporaryFile() as err:
        began = time.time()
        proc = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            try:
                tree = [proc] + proc.children(recursive=True)
                now = time.time()
                samples.append((now, sum(sum(p.cpu_times()[:2]) for p in tree)))
                server_samples.append((now, sum(stub.cpu_times()[:2])))
            except psutil.Error:
                pass
            time.sleep(0.05)
        wall = time.time() - began
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command[:6])} ... failed ({proc.returncode}):\n"
                             f"{err.read().decode(errors='replace')[-3000:]}")
    stats = server.stats()
    arrivals = sorted(stats["arrivals"])
    if stats["requests"] != total:
        raise SystemExit(f"{command[1:4]}: the server saw {stats['requests']} requests, expected {total}")
    lo, hi = len(arrivals) // 10, len(arrivals) - 1 - len(arrivals) // 10
    cpu_ms = 1000 * (_cpu_at(samples, arrivals[hi]) - _cpu_at(samples, arrivals[lo])) / max(1, hi - lo)
    server_ms = 1000 * (_cpu_at(server_samples, arrivals[hi]) - _cpu_at(server_samples, arrivals[lo])) / max(1, hi - lo)
    return {"steady": _steady(arrivals), "wall": total / wall, "wall_s": wall, "cpu_ms": cpu_ms, "server_ms": server_ms,
            "first_s": arrivals[0] - began, "max_in_flight": stats["max_in_flight"]}


def _sides(concurrency: int, smoke: bool) -> list[tuple[str, str, str, int]]:
    """(label, kind, target, dask workers) in the order they run after the raw baseline."""
    providers = ("hosted_vllm",) if smoke else CLIENT_PROVIDERS
    backends = ("vllm",) if smoke else CLI_BACKENDS
    sides = [(f"client {p}", "client", p, 0) for p in providers]
    sides += [(f"cli {b}", "cli", b, 0) for b in backends]
    if concurrency > 1 and not smoke:
        sides.append(("cli vllm, 2 procs", "cli", "vllm", 2))
    return sides


def _fmt(values: list[float], digits: int = 0) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if len({round(v, digits) for v in values}) == 1 else f"{lo:.{digits}f} to {hi:.{digits}f}"


def driver(args: argparse.Namespace) -> None:
    from recipe.testing.stub_server import StubServer

    banner("overhead")
    smoke = args.smoke
    reps = args.reps or (1 if smoke else 3)
    results = []
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp, StubServer() as server:
        env["RECIPE_RUNS_DIR"] = os.path.join(tmp, "runs")
        table: dict[tuple[int, str], list[dict]] = {}
        for rep in range(reps):
            for concurrency in ((64,) if smoke else (64, 1)):  # smoke: the same code paths, once
                total = args.total or (100 if smoke else 3000)
                total = total if concurrency > 1 else max(100, total // 3)
                input_path = os.path.join(tmp, f"prompts-{total}.jsonl")
                if not os.path.exists(input_path):
                    with open(input_path, "w") as handle:
                        handle.writelines(json.dumps({"prompt": f"Say something short ({i})."}) + "\n"
                                          for i in range(total))
                side = [sys.executable, __file__, "--base-url", server.base_url, "--concurrency", str(concurrency),
                        "--total", str(total), "--side"]
                base = _run_side(server, side + ["raw"], total, env)
                table.setdefault((concurrency, "raw openai SDK"), []).append({**base, "ratio": 1.0, "wall_ratio": 1.0,
                                                                              "cpu_ratio": 1.0})
                print(f"rep {rep + 1}, concurrency {concurrency}, {total} requests")
                report("  raw openai SDK (baseline), steady", base["steady"], base["steady"], "req/s")
                report("  raw openai SDK (baseline), CPU per request", base["cpu_ms"], base["cpu_ms"], "ms")
                for label, kind, target, workers in _sides(concurrency, smoke):
                    if kind == "client":
                        command = side + ["client", "--target", target]
                    else:
                        out_dir = os.path.join(tmp, f"out-{rep}-{concurrency}-{target}-{workers}")
                        command = _cli_command(server.base_url, concurrency, target, input_path, out_dir, workers)
                    got = _run_side(server, command, total, env)
                    got["ratio"], got["wall_ratio"] = got["steady"] / base["steady"], got["wall"] / base["wall"]
                    got["cpu_ratio"] = got["cpu_ms"] / base["cpu_ms"]
                    table.setdefault((concurrency, label), []).append(got)
                    results.append(report(f"  {label}, c={concurrency}, steady", got["steady"], base["steady"], "req/s"))
                    report(f"  {label}, c={concurrency}, wall", got["wall"], base["wall"], "req/s")
                    report(f"  {label}, c={concurrency}, CPU per request", got["cpu_ms"], base["cpu_ms"], "ms")
        print("\nsummary (ranges over repetitions; ratios against the raw SDK of the same repetition)")
        print("| concurrency | side | steady req/s | steady ratio | wall (s) | wall ratio | first request (s) "
              "| client CPU ms/req (steady) | CPU ratio | server CPU ms/req |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (concurrency, label), runs in table.items():
            print(f"| {concurrency} | {label} | {_fmt([r['steady'] for r in runs])} | "
                  f"{_fmt([r['ratio'] for r in runs], 2)} | {_fmt([r['wall_s'] for r in runs], 1)} | "
                  f"{_fmt([r['wall_ratio'] for r in runs], 2)} | {_fmt([r['first_s'] for r in runs], 1)} | "
                  f"{_fmt([r['cpu_ms'] for r in runs], 2)} | {_fmt([r['cpu_ratio'] for r in runs], 2)} | "
                  f"{_fmt([r['server_ms'] for r in runs], 2)} |")
    save("overhead", results)


# ---- the profile ---------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> None:
    """cProfile in every thread (a profiler per thread, merged; thread CPU time) over one generate run."""
    import cProfile
    import pstats
    import threading

    from recipe.testing.stub_server import StubServer

    profilers: list[cProfile.Profile] = []

    def start_in_thread(*_):  # the first profile event of a new thread installs its own profiler
        profiler = cProfile.Profile(time.thread_time)  # CPU of this thread: the shared machine's load drops out
        profilers.append(profiler)
        profiler.enable()

    total = args.total or (200 if args.smoke else 3000)
    with tempfile.TemporaryDirectory() as tmp, StubServer() as server:
        input_path = os.path.join(tmp, "prompts.jsonl")
        with open(input_path, "w") as handle:
            handle.writelines(json.dumps({"prompt": f"Say something short ({i})."}) + "\n" for i in range(total))
        import recipe
        from recipe.clients.litellm_setup import get_litellm

        get_litellm()
        cfg = recipe.compose(_cli_command(server.base_url, 64, "vllm", input_path, os.path.join(tmp, "out"), 0)[3:])
        threading.setprofile(start_in_thread)
        main = cProfile.Profile(time.thread_time)
        main.enable()
        began = time.perf_counter()
        summary = recipe.run(cfg)
        wall = time.perf_counter() - began
        main.disable()
        threading.setprofile(None)
        for profiler in profilers:
            profiler.disable()
    stats = pstats.Stats(main)
    for profiler in profilers:
        stats.add(profiler)
    print(f"{summary.records} records in {wall:.2f} s under the profiler ({summary.records / wall:.0f} rec/s), "
          f"{len(profilers)} threads profiled")
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, same code paths")
    parser.add_argument("--reps", type=int, default=0)
    parser.add_argument("--total", type=int, default=0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--side", choices=("raw", "client"))
    parser.add_argument("--target", default="hosted_vllm")
    parser.add_argument("--base-url")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.side:
        side_main(args)
    elif args.profile:
        profile(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
