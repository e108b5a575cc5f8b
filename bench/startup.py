"""Startup: wall time and peak RSS of the CLI's cheap paths, against a bare interpreter.

Each command runs in a fresh subprocess (5 times, smoke: 1; the median is reported); its peak
RSS comes from ``os.wait4``'s rusage of that one child. The baseline is ``python -c pass``, so the
ratio is ours / bare interpreter. One extra ``python -X importtime`` run per command shows
whether litellm (or Dask) got imported. Goal: ``--help`` and ``--cfg job`` under 1.5 s, with
litellm never imported.

Then the first request of a run: seconds from a fresh process's start to its first request at a
zero-latency stub server, for ``python -m recipe backend=vllm`` on 20 prompts, against the raw
OpenAI SDK's first request (baseline) and against a plain ``import litellm`` in a process of its own
(what any tool whose requests litellm builds pays first; ours pauses the garbage collector for it,
see ``litellm_setup``). Goal: under 3 s.

    python bench/startup.py [--smoke]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small  # noqa: E402

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import recipe'": ["-c", "import recipe"],
    "python -m recipe --help": ["-m", "recipe", "--help"],
    "python -m recipe --cfg job": ["-m", "recipe", "--cfg", "job"],
}
HEAVY = ("litellm", "openai", "dask", "distributed")


def once(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with exit {proc.returncode}: {err[-500:]}")
    return wall, usage.ru_maxrss / 1024


def imported(args: list[str], env: dict) -> list[str]:
    """Which of HEAVY the command imported (top-level packages in -X importtime's output)."""
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    return [name for name in HEAVY if name in names]


RAW_FIRST = """
import asyncio, openai, sys
async def main():
    client = openai.AsyncOpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    await client.close()
asyncio.run(main())
"""


def first_request(server, args: list[str], env: dict) -> float:
    """Seconds from starting ``python args`` to its first request at ``server``."""
    server.reset()
    began = time.time()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    arrivals = server.stats()["arrivals"]
    if not arrivals:
        raise SystemExit(f"{args[:3]}: no request reached the server")
    return min(arrivals) - began


def first_requests(repeats: int, tmp: str, env: dict) -> list[dict]:
    """The first-request section (see the module's docstring)."""
    import json

    from overhead import _cli_command
    from recipe.testing.stub_server import StubServer

    prompts = os.path.join(tmp, "prompts.jsonl")
    with open(prompts, "w") as handle:
        handle.writelines(json.dumps({"prompt": f"Say something short ({i})."}) + "\n" for i in range(20))
    results = []
    with StubServer() as server:
        # the import alone: os._exit skips the interpreter's teardown of litellm's objects
        import_litellm = statistics.median(once(["-c", "import litellm, os; os._exit(0)"], env)[0]
                                           for _ in range(repeats))
        raw, cli = [], []
        for i in range(repeats):  # interleaved: a load change hits both sides alike
            raw.append(first_request(server, ["-c", RAW_FIRST, server.base_url], env))
            command = _cli_command(server.base_url, 64, "vllm", prompts, os.path.join(tmp, f"out-{i}"), 0)
            cli.append(first_request(server, command[1:], env))
        raw_s, cli_s = statistics.median(raw), statistics.median(cli)
        print(f"first request, median of {repeats}:")
        results.append(report("raw openai SDK: first request", raw_s * 1000, raw_s * 1000, "ms"))
        results.append(report("python -c 'import litellm' (process, no teardown)", import_litellm * 1000, raw_s * 1000, "ms"))
        results.append(report("python -m recipe backend=vllm: first request", cli_s * 1000, raw_s * 1000, "ms"))
        print(f"  goal under 3 s: {'met' if cli_s < 3 else 'NOT met'} ({cli_s:.2f} s; import litellm alone "
              f"{import_litellm:.2f} s)")
    return results


def main() -> None:
    banner("startup")
    repeats = 1 if small() else 5
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RECIPE_RUNS_DIR": tmp}
        measured = {}
        for label, args in COMMANDS.items():
            runs = [once(args, env) for _ in range(repeats)]
            measured[label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        base_wall, base_rss = measured["python -c pass"]
        print(f"median of {repeats} run(s) each")
        for label, (wall, rss) in measured.items():
            results.append(report(f"{label}: wall", wall * 1000, base_wall * 1000, "ms"))
            results.append(report(f"{label}: peak RSS", rss, base_rss, "MiB"))
        for label, args in list(COMMANDS.items())[1:]:
            heavy = imported(args, env)
            print(f"{label}: imports {', '.join(heavy) if heavy else 'none of ' + '/'.join(HEAVY)}")
            if "--help" in args or "--cfg" in args:
                wall = measured[label][0]
                ok = wall < 1.5 and "litellm" not in heavy
                print(f"  goal under 1.5 s without litellm: {'met' if ok else 'NOT met'} ({wall:.2f} s)")
        results += first_requests(repeats, tmp, env)
    save("startup", results)


if __name__ == "__main__":
    main()
