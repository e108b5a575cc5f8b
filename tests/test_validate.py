"""ValidateStage: code run in a sandbox, SQL, math answers and JSON checked, records kept or dropped.

Hostile code runs through the CLI, once for all cases (one record each, beside two honest
solutions), and each case is its own test over that one run: each must end as one record with
``valid: false`` and the reason, while the run goes on and the honest records still pass.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl
from recipe.testing.stub_server import StubServer

SECRET = "nvapi-sandbox-test-secret-5f1c"

RECIPE = """\
name: checks
stages:
  read:
    _target_: recipe.stages.ReadStage
    path: ${input}
  check:
    _target_: recipe.stages.ValidateStage
    kind: python
    field: code
    tests_field: tests
    cpu_seconds: 2
    timeout: 6
  write:
    _target_: recipe.stages.WriteStage
    format: jsonl
"""


def _conf(tmp_path: Path, text: str = RECIPE) -> str:
    conf = tmp_path / "conf" / "recipe"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "checks.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def _run(tmp_path: Path, server, rows: list[dict], *extra: str, env: dict | None = None):
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    result = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={out}", _conf(tmp_path),
                 *stub_overrides(server), *extra, env=env, timeout=600)
    return result, out


def _escape_path(tmp_path: Path) -> Path:
    return tmp_path / "escaped.txt"


HOSTILE = {
    "infinite_loop": "while True:\n    pass",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "allocate_10_gb": "block = bytearray(10 * 1024 ** 3)",
    "write_outside": "open(ESCAPE, 'w').write('escaped')",
    "read_api_key": "import os\nprint(os.environ['NVIDIA_API_KEY'])",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)",
    "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef down(n):\n    return down(n + 1) + 1\ndown(0)",
    "print_1_gb": "import sys\nchunk = 'x' * 2 ** 20\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
    # a passing verdict written to every descriptor it holds, in the status file's format, then failure
    "forge_status": "import marshal, os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, marshal.dumps("
                    "{'exit': 0, 'signal': None, 'timed_out': False, 'isolation': []}))\n    except OSError:\n"
                    "        pass\nraise SystemExit(1)",
}
HONEST = {"honest": ("```python\ndef add(a, b):\n    return a + b\n```", "assert add(2, 3) == 5"),
          "wrong": ("def add(a, b):\n    return a - b", "assert add(2, 3) == 5, 'add is wrong'")}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    with StubServer() as server:
        yield _hostile_run(tmp_path_factory.mktemp("hostile"), server)


def _hostile_run(tmp_path: Path, server: StubServer) -> dict:
    rows = [{"case": name, "code": code.replace("ESCAPE", repr(str(_escape_path(tmp_path)))), "tests": ""}
            for name, code in HOSTILE.items()]
    rows += [{"case": name, "code": code, "tests": tests} for name, (code, tests) in HONEST.items()]
    before = _nobody_processes()
    result, out = _run(tmp_path, server, rows, env={"NVIDIA_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["case"]: r for r in outputs(out)}
    return {"tmp": tmp_path, "out": out, "records": records, "result": result, "server": server,
            "stray": _nobody_processes() - before}


def _nobody_processes() -> set[str]:
    listed = subprocess.run(["ps", "-u", "nobody", "-o", "pid="], capture_output=True, text=True).stdout
    return set(listed.split())


def test_the_run_goes_on_and_every_record_is_judged(hostile_run):
    records = hostile_run["records"]
    assert set(records) == set(HOSTILE) | set(HONEST) and not error_rows(hostile_run["out"])
    assert records["honest"]["validation"]["valid"] is True and records["honest"]["validation"]["error"] is None
    wrong = records["wrong"]["validation"]
    assert wrong["valid"] is False and wrong["error"] == "AssertionError: add is wrong"
    assert wrong["failed_assertion"] == "assert add(2, 3) == 5, 'add is wrong'"
    assert hostile_run["server"].stats()["requests"] == 0, "validation asks no model"
    assert not hostile_run["stray"], "no process of the sandbox outlives its run"


def _check(hostile_run, case: str) -> dict:
    check = hostile_run["records"][case]["validation"]
    assert check["valid"] is False and check["ran"] is True, check
    return check


LIMITS = r"^(CPU time limit of 2 s exceeded|time limit: still running after 6 s \(wall clock\), killed)$"


def test_infinite_loop(hostile_run):
    assert re.match(LIMITS, _check(hostile_run, "infinite_loop")["error"])


def test_fork_bomb(hostile_run):
    # RLIMIT_NPROC holds (the code runs as nobody): fork fails, or the bomb spins until a limit.
    assert re.match(r"^BlockingIOError: \[Errno 11\]|" + LIMITS[1:], _check(hostile_run, "fork_bomb")["error"])


def test_allocating_10_gb(hostile_run):
    assert _check(hostile_run, "allocate_10_gb")["error"] == "MemoryError"


def test_writing_outside_the_working_directory(hostile_run):
    check = _check(hostile_run, "write_outside")
    assert check["error"].startswith(("OSError: [Errno 30] Read-only file system", "PermissionError"))
    assert not _escape_path(hostile_run["tmp"]).exists()


def test_reading_the_api_key(hostile_run):
    assert _check(hostile_run, "read_api_key")["error"] == "KeyError: 'NVIDIA_API_KEY'"
    written = "".join(p.read_text() for p in hostile_run["out"].rglob("*") if p.is_file())
    assert SECRET not in written


def test_killing_the_parent(hostile_run):
    check = _check(hostile_run, "kill_parent")
    assert check["error"] == "PermissionError: [Errno 1] Operation not permitted"
    # the worker survived: the records after it were judged (the honest ones among them)
    assert hostile_run["records"]["honest"]["validation"]["valid"] is True


def test_deep_recursion(hostile_run):
    error = _check(hostile_run, "deep_recursion")["error"]
    assert re.match(r"^(MemoryError|RecursionError|killed by SIGSEGV)|" + LIMITS[1:], error), error


def test_printing_1_gb(hostile_run):
    check = _check(hostile_run, "print_1_gb")
    assert check["error"] == "output limit: printed more than 65536 bytes (stopped)"
    assert 0 < len(check["stdout"]) <= 2000 and set(check["stdout"]) == {"x"}
    assert "network" in check["isolation"], "the warden still reported how it isolated the run"


def test_forging_the_verdict(hostile_run):
    assert _check(hostile_run, "forge_status")["error"] == "exit status 1"


def test_network_is_unreachable(stub_server, tmp_path):
    """The sandbox has no network: the stub server on 127.0.0.1 cannot be reached from it."""
    server = stub_server()
    port = server.base_url.split(":")[-1].split("/")[0]
    code = f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/v1/models', timeout=3)"
    rows = [{"code": code, "tests": ""}, {"code": "print('offline')", "tests": ""}]
    result, out = _run(tmp_path, server, rows)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = (r["validation"] for r in outputs(out))
    assert first["valid"] is False and "Network is unreachable" in first["error"], first
    assert second["valid"] is True and second["stdout"] == "offline\n"
    assert server.stats()["requests"] == 0


def test_filter_drops_and_counts_invalid_records(stub_server, tmp_path):
    server = stub_server()
    rows = [{"code": f"def double(x):\n    return x * {factor}", "tests": "assert double(4) == 8"} for factor in (2, 3, 2, 5)]
    result, out = _run(tmp_path, server, rows, "+recipe.stages.check.filter=true")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = outputs(out)
    assert [r["code"][-1] for r in kept] == ["2", "2"] and all(r["validation"]["valid"] for r in kept)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["filtered"] == 2 and stats["records"] == 2 and stats["failed"] == 0


def test_on_a_two_worker_cluster(stub_server, tmp_path, two_workers):
    """On Dask worker processes (daemonic: no child processes of their own through
    multiprocessing) the checks still run, each in its sandbox."""
    server = stub_server()
    rows = [{"code": f"def double(x):\n    return x * {factor}", "tests": "assert double(4) == 8"} for factor in (2, 3)]
    result, out = _run(tmp_path, server, rows, f"dask.address={two_workers}")
    assert result.returncode == 0, result.stderr[-2000:]
    good, bad = (r["validation"] for r in outputs(out))
    assert good["valid"] is True and "network" in good["isolation"]
    assert bad["valid"] is False and bad["failed_assertion"] == "assert double(4) == 8"


def test_given_tests_and_compile_only(stub_server, tmp_path):
    server = stub_server()
    rows = [{"code": "def inc(x):\n    return x + 1", "tests": ""}, {"code": "def inc(x) return x", "tests": ""}]
    result, out = _run(tmp_path, server, rows, "~recipe.stages.check.tests_field",
                       "+recipe.stages.check.tests=['assert inc(1) == 2', 'assert inc(-1) == 0']")
    assert result.returncode == 0, result.stderr[-2000:]
    good, bad = (r["validation"] for r in outputs(out))
    assert good["valid"] is True and good["ran"] is True
    assert bad["valid"] is False and bad["error"] == "code do not compile: SyntaxError: expected ':' (line 1)"
    result, out = _run(tmp_path / "compile", server, [{"code": "while True: pass", "tests": ""}],
                       "+recipe.stages.check.run=false")
    assert outputs(out)[0]["validation"] == {"valid": True, "error": None, "ran": False}


@pytest.mark.parametrize("override,message", [
    ("recipe.stages.check.kind=perl", "recipe.stages.check.kind: must be python, sql, math or json_schema, not 'perl'"),
    ("recipe.stages.check.kind=math", "recipe.stages.check.tests_field: applies to kind python, not math; "
                                      "recipe.stages.check.cpu_seconds: applies to kind python, not math; "
                                      "recipe.stages.check.timeout: applies to kind python, not math; "
                                      "recipe.stages.check.reference_field: kind math compares field with "
                                      "reference_field: name it"),
    ("+recipe.stages.check.dialect=postgres", "recipe.stages.check.dialect: applies to kind sql, not python"),
    ("recipe.stages.check.cpu_seconds=0", "recipe.stages.check.cpu_seconds: must be >= 1, not 0"),
])
def test_bad_parameters_are_one_error_line_before_any_request(stub_server, tmp_path, override, message):
    server = stub_server()
    result, _ = _run(tmp_path, server, [{"code": "pass", "tests": ""}], override)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: invalid config: {message}"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and server.stats()["requests"] == 0


KINDS = """\
name: checks
stages:
  read:
    _target_: recipe.stages.ReadStage
    path: ${input}
  check:
    _target_: recipe.stages.ValidateStage
    kind: sql
    field: query
    dialect: postgres
    database: "CREATE TABLE pets(name TEXT, age INT); INSERT INTO pets VALUES ('Rex', 3), ('Tom', 5);"
  write:
    _target_: recipe.stages.WriteStage
    format: jsonl
"""


def test_sql_parses_in_its_dialect_and_runs_on_the_schema(stub_server, tmp_path):
    server = stub_server()
    rows = [{"query": "```sql\nSELECT name, age::TEXT AS years FROM pets WHERE age > 4\n```"},
            {"query": "SELECT name FROM pets WHERE"},
            {"query": "SELECT colour FROM pets"},
            {"query": "ATTACH DATABASE '" + str(tmp_path / "x.db") + "' AS x"},
            {"query": "pets AS animals"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    result = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={out}", _conf(tmp_path, KINDS),
                 *stub_overrides(server))
    assert result.returncode == 0, result.stderr[-2000:]
    ok, unparsable, unknown, attach, expression = (r["validation"] for r in outputs(out))
    assert expression == {"valid": False, "error": "not a SQL statement: 'pets AS animals'"}
    assert ok == {"valid": True, "error": None, "statements": 1, "columns": ["name", "years"], "rows": [["Tom", "5"]]}
    assert unparsable["valid"] is False and unparsable["error"].startswith("does not parse as postgres: ")
    assert unknown == {"valid": False, "error": "fails on the database: no such column: colour"}
    assert attach["valid"] is False and attach["error"].startswith("does not parse as postgres: ")
    as_sqlite = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={tmp_path / 'o1'}",
                    _conf(tmp_path, KINDS), "recipe.stages.check.dialect=sqlite", *stub_overrides(server))
    assert as_sqlite.returncode == 0, as_sqlite.stderr[-2000:]
    attach = outputs(tmp_path / "o1")[3]["validation"]  # SQLite's ATTACH parses: SQLite itself refuses it
    assert attach == {"valid": False, "error": "fails on the database: too many attached databases - max 0"}
    assert not (tmp_path / "x.db").exists()
    bad_db = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={tmp_path / 'o2'}", _conf(tmp_path, KINDS),
                 "recipe.stages.check.database='CREATE TABLE broken('", *stub_overrides(server))
    assert bad_db.returncode == 2
    assert "error: invalid config: recipe.stages.check.database: does not build in SQLite: incomplete input" in bad_db.stderr
    assert "Traceback" not in bad_db.stderr


def test_math_and_json_schema(stub_server, tmp_path):
    server = stub_server()
    math = KINDS.replace("kind: sql", "kind: math").replace("field: query", "field: answer").replace(
        "    dialect: postgres\n", "    reference_field: reference\n").split("    database:")[0] + \
        "  write:\n    _target_: recipe.stages.WriteStage\n    format: jsonl\n"
    rows = [{"answer": "Halving it gives $\\boxed{\\frac{1}{2}}$.", "reference": "0.5"},
            {"answer": "So x = 3.", "reference": "The answer is \\boxed{4}"},
            {"answer": "I do not know.", "reference": "4"},
            # the question's sum restated is not its value (math-verify alone would find 10 + 10 equal to 20)
            {"answer": "10 + 10 = Answer: Answer", "reference": "20"}, {"answer": "2 + 3 = 5", "reference": "5"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={tmp_path / 'm'}", _conf(tmp_path, math),
                 *stub_overrides(server))
    assert result.returncode == 0, result.stderr[-2000:]
    half, three, none, undone, done = (r["validation"] for r in outputs(tmp_path / "m"))
    assert half["valid"] is True and three == {"valid": False, "error": "answer 3 is not 4", "answer": "3", "reference": "4"}
    assert none["valid"] is False and none["error"] == "no final answer found"
    assert undone["valid"] is False and undone["answer"] == "10 + 10" and "left undone" in undone["error"]
    assert done["valid"] is True and done["answer"] == "5"

    schema = math.replace("kind: math", "kind: json_schema").replace(
        "    reference_field: reference\n",
        "    schema: {type: object, properties: {n: {type: integer}}, required: [n]}\n")
    rows = [{"answer": '{"n": 3}'}, {"answer": '{"n": "three"}'}, {"answer": "three"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, "recipe=checks", f"input={source}", f"output_dir={tmp_path / 'j'}",
                 _conf(tmp_path, schema), *stub_overrides(server))
    assert result.returncode == 0, result.stderr[-2000:]
    checks = [r["validation"] for r in outputs(tmp_path / "j")]
    assert checks[0] == {"valid": True, "error": None}
    assert checks[1] == {"valid": False, "error": "n: 'three' is not of type 'integer'"}
    assert checks[2]["valid"] is False and checks[2]["error"].startswith("not JSON: ")
