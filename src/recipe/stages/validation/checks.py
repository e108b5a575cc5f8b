"""The checks of :class:`~recipe.stages.quality.validate.ValidateStage`: one function per kind, a value in,
``{"valid": bool, "error": str | None, ...}`` out, and the process pool they run in.

A check never raises for a bad value: what the model wrote is the thing being judged, so its
failure is ``valid: false`` with the reason. Only a failure of the checking machinery itself (the
sandbox could not start, the pool broke twice) raises, and becomes the record's error record.

The checks run in a pool of worker processes (:func:`submit`): Python code is compiled there and
run in a sandbox (:mod:`recipe.stages.validation.sandbox`) below it, SQL runs on SQLite there, and math-verify's
own timeouts (``signal.alarm``) work there, in a main thread. Nothing of it runs on the event loop;
a Dask thread only waits for its partition's futures. Where processes cannot be started (a
daemonic Dask worker process), the pool is a thread pool: the sandbox is a process anyway.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from recipe.stages.validation import sandbox

FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
PYTHON_TAGS = ("python", "py", "python3")
SQL_TAGS = ("sql", "sqlite", "postgresql", "mysql")
MAX_ROWS = 20
#: sqlglot's statements that are neither queries, DML nor DDL (an expression alone is no statement).
_STATEMENTS = {"Drop", "Alter", "Pragma", "Transaction", "Commit", "Rollback", "Set", "Use", "TruncateTable",
               "Describe", "Analyze", "Copy", "Grant", "Revoke", "Show", "Comment", "Cache", "Uncache", "Refresh",
               "Attach", "Detach"}
SQL_SECONDS = 5.0


def extract_code(text: str, tags: tuple[str, ...] = PYTHON_TAGS) -> str:
    """The code of a model's answer: every fenced block tagged with one of ``tags`` (or, when none
    is, every untagged block), joined; a block cut off before its closing fence runs to the end.
    Text without any fence is taken as code."""
    blocks = FENCE.findall(text)
    if not blocks:
        return text.strip("\n")
    chosen = [body for tag, body in blocks if tag.lower() in tags] or [body for tag, body in blocks if not tag]
    return "\n\n".join(body.strip("\n") for body in chosen)


def _tests_code(tests: Any) -> str:
    if tests is None:
        return ""
    if isinstance(tests, (list, tuple)):
        return "\n".join(str(t) for t in tests)
    return extract_code(str(tests))


def check_python(text: str, tests: Any = None, run: bool = True, limits: sandbox.Limits = sandbox.Limits()) -> dict:
    """Compile the code of ``text``; with ``run``, run it and then ``tests`` in a sandbox."""
    code = extract_code(str(text))
    if not code.strip():
        return {"valid": False, "error": "no Python code in the answer"}
    extra = _tests_code(tests)
    for what, source in (("code", code), ("tests", extra)):
        try:
            compile(source, "solution.py", "exec")
        except SyntaxError as exc:
            return {"valid": False, "error": f"{what} do not compile: SyntaxError: {exc.msg} (line {exc.lineno})"}
        except (ValueError, MemoryError, RecursionError) as exc:  # NUL bytes, absurd nesting
            return {"valid": False, "error": f"{what} do not compile: {type(exc).__name__}: {exc}"}
    if not run:
        return {"valid": True, "error": None, "ran": False}
    program = code + ("\n\n# --- tests ---\n" + extra if extra.strip() else "")
    result = sandbox.run_python(program, limits)
    out = {"valid": result["ok"], "error": result["error"], "ran": True}
    out.update({key: result[key] for key in ("failed_assertion", "stdout", "stderr", "seconds", "isolation")})
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def check_sql(text: str, dialect: str = "sqlite", database: str | None = None) -> dict:
    """Parse the SQL of ``text`` in ``dialect``; with ``database`` (SQL that builds a schema),
    run it, as SQLite, on an in-memory database built from it: no file is ever written."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its fallback warnings: the verdict says it
    sql = extract_code(str(text), SQL_TAGS).strip()
    if not sql:
        return {"valid": False, "error": "no SQL in the answer"}
    named = dialect or "generic SQL"  # "": sqlglot's own dialect (Data Designer's sql:ansi)
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        return {"valid": False, "error": f"does not parse as {named}: {_first_line(exc)}"}
    if not statements:
        return {"valid": False, "error": "no SQL statement"}
    for statement in statements:
        if isinstance(statement, exp.Command):  # sqlglot kept it as raw text: it could not parse it
            return {"valid": False, "error": f"does not parse as {named}: {statement.sql()[:80]!r} is not understood"}
        if not (isinstance(statement, (exp.Query, exp.DML, exp.DDL)) or type(statement).__name__ in _STATEMENTS):
            return {"valid": False, "error": f"not a SQL statement: {statement.sql()[:80]!r}"}
    if database is None:
        return {"valid": True, "error": None, "statements": len(statements)}
    try:
        runnable = [s.sql(dialect="sqlite") for s in statements]
    except SqlglotError as exc:
        return {"valid": False, "error": f"cannot be run as SQLite: {_first_line(exc)}"}
    try:
        columns, rows = run_sqlite(database, runnable)
    except Exception as exc:  # noqa: BLE001 - sqlite3.Error and its kin: the query's failure
        return {"valid": False, "error": f"fails on the database: {_first_line(exc)}"}
    return {"valid": True, "error": None, "statements": len(statements), "columns": columns, "rows": rows}


def run_sqlite(database: str, statements: list[str], seconds: float = SQL_SECONDS) -> tuple[list, list]:
    """Run ``statements`` on a fresh in-memory SQLite built by ``database``: (columns, first rows)
    of the last one. No ATTACH (so no file, not even through VACUUM INTO), no extensions, a time limit."""
    import sqlite3

    conn = sqlite3.connect(":memory:")
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        deadline = time.monotonic() + seconds
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10000)
        conn.executescript(database)
        cursor = None
        for statement in statements:
            cursor = conn.execute(statement)
        columns = [d[0] for d in (cursor.description or [])] if cursor is not None else []
        rows = [[_jsonable(v) for v in row] for row in cursor.fetchmany(MAX_ROWS)] if cursor is not None and columns else []
        return columns, rows
    finally:
        conn.close()


def check_math(answer: Any, reference: Any) -> dict:
    """Whether ``answer``'s final answer equals ``reference``'s, as math-verify reads both
    (LaTeX, boxed answers, plain numbers, sets and intervals)."""
    from math_verify import parse, verify

    in_main = threading.current_thread() is threading.main_thread()  # math-verify's timeouts use signals
    timeout = {} if in_main else {"parsing_timeout": None}
    if not in_main:  # a thread pool (a daemonic Dask worker): no timeouts, and no warning per check about it
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(str(reference), **timeout)
    if not gold:
        return {"valid": False, "error": f"no final answer found in the reference: {str(reference)[-80:]!r}"}
    found = parse(str(answer), **timeout)
    if not found:
        return {"valid": False, "error": "no final answer found", "reference": str(gold[-1])}
    if _arithmetic_left_undone(found[0]) and getattr(gold[0], "is_Number", False):
        return {"valid": False, "error": f"the final answer {found[-1]} is arithmetic left undone, not a value",
                "answer": str(found[-1]), "reference": str(gold[-1])}
    same = verify(gold, found, **({} if in_main else {"timeout_seconds": None}))
    shown = {"answer": str(found[-1]), "reference": str(gold[-1])}
    return {"valid": bool(same), "error": None if same else f"answer {shown['answer']} is not {shown['reference']}",
            **shown}


def _arithmetic_left_undone(expr: Any) -> bool:
    """Whether math-verify's reading of an answer is arithmetic on numbers left undone (``10 + 10``,
    ``6 - 2``, ``2*3``): math-verify evaluates it and finds it equal to 20, so an answer that only
    restates the question's sum would pass as right. A fraction (``1/2``), a power (``10^8``) and
    anything with a constant or a variable (``2\\pi``, ``x + 1``) are values, not undone sums."""
    import sympy

    if not isinstance(expr, (sympy.Add, sympy.Mul)) or not all(a.is_Number for a in expr.atoms()):
        return False
    fraction = isinstance(expr, sympy.Mul) and len(expr.args) == 2 and any(
        isinstance(a, sympy.Pow) and a.exp == -1 for a in expr.args)
    return not fraction


def check_json_schema(value: Any, validator: Any) -> dict:
    """``value`` (a JSON string is parsed first, unless the schema asks for a string) against
    a ``jsonschema`` validator; the first error, by path, names where it breaks."""
    if isinstance(value, str) and validator.schema.get("type") != "string":
        try:
            value = json.loads(extract_code(value, ("json",)))
        except ValueError as exc:
            return {"valid": False, "error": f"not JSON: {exc}"}
    errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return {"valid": True, "error": None}
    first = errors[0]
    where = "/".join(map(str, first.absolute_path)) or "(root)"
    return {"valid": False, "error": f"{where}: {first.message[:300]}"}


# --- the pool ------------------------------------------------------------------------------

_lock = threading.Lock()
_pool: cf.Executor | None = None
_pool_size = 0


def _quiet_worker() -> None:
    """Ctrl-C is the run's to handle: a worker finishes its check, the run stops taking results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _new_pool(workers: int) -> cf.Executor:
    if multiprocessing.current_process().daemon:  # a daemonic process may not have children
        return cf.ThreadPoolExecutor(workers, thread_name_prefix="recipe-validate")
    return cf.ProcessPoolExecutor(workers, mp_context=_start_method(), initializer=_quiet_worker)


def _start_method() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported this module, where the platform has one: each worker is then
    a fork of it (~0.02 CPU-s) instead of a new interpreter importing the stages (~0.5 CPU-s each,
    so a pool as wide as a 64-core machine cost half a minute of CPU to start). Not a fork of the
    run itself: that holds the event loop's and Dask's threads, and their locks."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def pool(workers: int | None = None) -> cf.Executor:
    """The process's one pool of checkers (``workers``: the CPU count), made on first use."""
    global _pool, _pool_size
    want = workers or os.cpu_count() or 1
    with _lock:
        if _pool is None or _pool_size != want:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = _new_pool(want), want
        return _pool


def _reset(broken: cf.Executor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False)


def submit(fn: Callable[..., dict], *args: Any, workers: int | None = None) -> cf.Future:
    """``fn(*args)`` in the pool."""
    return pool(workers).submit(fn, *args)


def result(future: cf.Future, fn: Callable[..., dict], *args: Any, workers: int | None = None) -> dict:
    """The check's result; a pool whose worker died (a check took it down) is replaced and the
    check run once more, then its failure is the record's error."""
    from recipe.clients.event_loop import check_cancelled

    try:
        while True:  # waiting, but stopping with the run
            try:
                return future.result(timeout=0.25)
            except cf.TimeoutError:
                if not future.done():
                    try:
                        check_cancelled()
                    except BaseException:
                        future.cancel()
                        raise
    except cf.process.BrokenProcessPool:
        _reset(pool(workers))
        try:
            return submit(fn, *args, workers=workers).result()
        except cf.process.BrokenProcessPool as exc:
            _reset(pool(workers))
            raise sandbox.SandboxError(f"the validation worker died twice on this record: {exc}") from None
