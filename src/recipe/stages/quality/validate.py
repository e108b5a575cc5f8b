"""Validation by execution: a record's code, SQL, math answer or JSON checked, and kept or dropped.

``ValidateStage(kind=..., field=...)`` writes ``{"valid": bool, "error": str | None, ...}`` to
``output_field``; with ``filter: true`` a record that is not valid is dropped and counted as
filtered in ``stats.json``, as FilterStage counts its drops. A value that fails is never an error
record: failing is what is being measured. Only a broken checker (the sandbox could not start)
makes an error record.

Kinds (the extra keys each adds to the result in brackets):

- ``python``: the code in the answer's markdown fences (all ``python`` blocks; the whole text
  without fences) is compiled; with ``run`` (the default) it runs, followed by the tests
  (``tests_field``, or ``tests`` given here: code, or a list of assert lines), in a sandbox
  (:mod:`recipe.stages.validation.sandbox`: limits, no network, no secrets, an empty directory). [ran,
  failed_assertion, stdout, stderr, seconds, isolation]
- ``sql``: parsed with sqlglot in ``dialect``; with ``database`` (SQL that creates tables and
  rows) also run, as SQLite, on an in-memory copy. [statements, columns, rows]
- ``math``: the final answer of ``field`` equals that of ``reference_field`` as math-verify
  reads them (LaTeX, ``\\boxed{}``, numbers, sets). [answer, reference]
- ``json_schema``: the value (a JSON string is parsed) against ``schema``.

Checks run in a process pool (:mod:`recipe.stages.validation.checks`), ``workers`` processes per Dask worker
(default: the CPU count), all records of a partition at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import Field

from recipe.errors import ConfigError, InputError
from recipe.stages.validation.sandbox import Limits
from recipe.stages import progress
from recipe.stages.base import Stage, failure_record
from recipe.stages.records import ERROR

#: The parameters each kind reads besides ``field``: another kind's parameter is refused, not ignored.
_OWN = {"python": ("tests_field", "tests", "run", "cpu_seconds", "timeout", "memory_mb", "processes",
                   "max_output_bytes"),
        "sql": ("dialect", "database"), "math": ("reference_field",), "json_schema": ("schema",)}


def _missing(module: str, install: str) -> str | None:
    """One line naming what to install when ``module`` cannot be imported."""
    try:
        __import__(module)
    except ImportError:
        return f"needs the {module} package: pip install {install}"
    return None


@dataclass
class ValidateStage(Stage):
    """``record[output_field]`` = ``{"valid", "error", ...}`` for ``record[field]`` (see the module).

    Input columns: ``field``, ``tests_field``, ``reference_field``. Output columns: ``output_field``.
    """

    kind: Literal["python", "sql", "math", "json_schema"] = "python"
    field: str = "response"
    output_field: str = "validation"
    filter: bool = False
    # python
    tests_field: str | None = None
    tests: str | list[str] | None = None
    run: bool = True
    cpu_seconds: Annotated[int, Field(ge=1)] = Limits.cpu_seconds
    timeout: Annotated[float, Field(gt=0)] = Limits.wall_seconds  # wall clock, seconds
    memory_mb: Annotated[int, Field(ge=32)] = Limits.memory_mb
    processes: Annotated[int, Field(ge=1)] = Limits.processes
    max_output_bytes: Annotated[int, Field(ge=1)] = Limits.output_bytes
    # sql
    dialect: str = "sqlite"
    database: str | None = None
    # math
    reference_field: str | None = None
    # json_schema
    schema: Any = None
    workers: Annotated[int, Field(ge=1)] | None = None

    def rules(self):
        defaults = {f.name: f.default for f in fields(self)}
        for kind, names in _OWN.items():
            if kind == self.kind:
                continue
            for name in names:
                if name not in _OWN[self.kind] and getattr(self, name) != defaults[name]:
                    yield name, f"{name} applies to kind {kind}, not {self.kind}"
        if self.kind == "python" and self.tests_field and self.tests is not None:
            yield "tests", "give tests or tests_field, not both"
        if self.kind == "math":
            if not self.reference_field:
                yield "reference_field", "kind math compares field with reference_field: name it"
            problem = _missing("math_verify", "math-verify")
            if problem:
                yield "kind", f"kind math {problem}"
        if self.kind == "json_schema":
            yield from self._schema_rules()
        if self.kind == "sql":
            yield from self._sql_rules()

    def _schema_rules(self):
        from recipe.clients.structured_output import load_schema

        self._schema = None
        if self.schema is None:
            yield "schema", "kind json_schema needs a schema (a JSON Schema mapping or a pydantic model's path)"
            return
        try:
            self._schema = load_schema(self.schema, where="schema").schema
        except ConfigError as exc:
            yield "schema", str(exc)

    def _sql_rules(self):
        problem = _missing("sqlglot", "'recipe[sql]'")
        if problem:
            yield "kind", f"kind sql {problem}"
            return
        from sqlglot.dialects.dialect import Dialect

        try:
            Dialect.get_or_raise(self.dialect)
        except ValueError as exc:
            yield "dialect", f"dialect {self.dialect!r}: {str(exc).splitlines()[0][:200]}"
        if self.database is not None:
            from recipe.stages.validation.checks import run_sqlite

            try:
                run_sqlite(self.database, [])
            except Exception as exc:  # noqa: BLE001 - sqlite3.Error: the user's DDL
                yield "database", f"database does not build in SQLite: {exc}"

    @property
    def inputs(self) -> set[str]:
        return {self.field} | {name for name in (self.tests_field, self.reference_field) if name}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    def _job(self, record: dict) -> tuple:
        """(check function, its arguments) for ``record``; a missing field is the record's error."""
        from recipe.stages.validation import checks as validators

        for name in self.inputs:
            if name not in record:
                raise InputError(f"record has no field {name!r} to validate")
        value = record[self.field]
        if self.kind == "python":
            tests = record[self.tests_field] if self.tests_field else self.tests
            limits = Limits(cpu_seconds=self.cpu_seconds, wall_seconds=self.timeout, memory_mb=self.memory_mb,
                            processes=self.processes, output_bytes=self.max_output_bytes)
            return validators.check_python, (value, tests, self.run, limits)
        if self.kind == "sql":
            return validators.check_sql, (value, self.dialect, self.database)
        if self.kind == "math":
            return validators.check_math, (value, record[self.reference_field])
        return validators.check_json_schema, (value, self._validator())

    def _validator(self):
        """The schema's jsonschema validator, made once per process (never pickled)."""
        made = self.__dict__.get("_made")
        if made is None:
            from jsonschema import validators as jsv

            made = self.__dict__["_made"] = jsv.validator_for(self._schema)(self._schema)
        return made

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_made"}

    def process_partition(self, records: list[dict]) -> list[dict]:
        from recipe.stages.validation import checks as validators

        pending: list[tuple[dict, Any]] = []
        for record in records:  # every check of the partition in flight at once, in the pool
            try:
                fn, args = self._job(record)
                if self.kind == "json_schema":  # a pure, quick check: no process needed
                    pending.append((record, (fn(*args), None, None)))
                else:
                    pending.append((record, (validators.submit(fn, *args, workers=self.workers), fn, args)))
            except Exception as exc:
                pending.append((record, failure_record(self.name, exc, record)))
        try:
            return self._collect(pending)
        except BaseException:  # the run stops: the checks not started yet never start
            for _, job in pending:
                if isinstance(job, tuple) and job[1] is not None:
                    job[0].cancel()
            raise

    def _collect(self, pending: list[tuple[dict, Any]]) -> list[dict]:
        from recipe.stages.validation import checks as validators

        out: list[dict] = []
        for record, job in pending:
            if isinstance(job, dict) and ERROR in job:
                out.append(job)
                continue
            done, fn, args = job
            try:
                result = done if fn is None else validators.result(done, fn, *args, workers=self.workers)
            except Exception as exc:
                out.append(failure_record(self.name, exc, record))
                continue
            if self.filter and not result["valid"]:
                progress.add_filtered(1)
                continue
            out.append({**record, self.output_field: result})
        return out
