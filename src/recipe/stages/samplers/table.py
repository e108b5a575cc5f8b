"""A sample stage's columns: declared, checked as a whole, and drawn for a partition's records.

Columns are drawn in order, each vectorised over the partition (a conditional column draws each
group of records with its parameters, from the same keyed uniforms). Expressions, conditions and
constraints are Jinja expressions over a record's earlier values, in the templates' sandbox.
A record that breaks a constraint is drawn again on the next attempt (a new keyed stream), until
every record holds; a constraint that rejects almost every draw stops the run instead of spinning.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recipe.errors import ConfigError, InputError
from recipe.stages.samplers.keyed import Draws
from recipe.stages.samplers.kinds import KINDS, Context, Kind, kind as find_kind
from recipe.stages.records import RESERVED

COLUMN_KEYS = ("sampler", "expression", "convert_to", "round", "conditional", "drop")
CONVERSIONS = ("int", "float", "str")
#: a constraint accepting fewer than this share of at least MIN_DRAWS draws stops the run
MIN_ACCEPTANCE, MIN_DRAWS, MAX_ATTEMPTS = 0.01, 1000, 1000


@dataclass
class Column:
    name: str
    kind: Kind | None = None  # None: an expression column
    sampler: str = "expression"
    params: dict = field(default_factory=dict)
    variants: list = field(default_factory=list)  # [(condition, params)] in order
    expression: str | None = None
    convert_to: str | None = None
    round: int | None = None
    drop: bool = False

    def all_params(self) -> list[dict]:
        return [self.params] + [params for _, params in self.variants]


def _refs(source: str) -> set[str]:
    from recipe.stages.templates import expression_fields

    return set(expression_fields(source))


class Table:
    """The parsed columns and constraints, and every problem found, each under its parameter."""

    def __init__(self, columns: Any, constraints: Any, known_inputs: bool) -> None:
        self.columns: list[Column] = []
        self.constraints: list[str] = []
        self.problems: list[tuple[str, str]] = []
        self.reads: set[str] = set()  # names used that are not columns: the incoming records' fields
        self._known_inputs = known_inputs  # a source (n): every name must be a column
        if not isinstance(columns, dict) or not columns:
            self.problems.append(("columns", "columns must map each column's name to its sampler and parameters"))
            return
        names = list(columns)
        for position, (name, spec) in enumerate(columns.items()):
            column = self._column(str(name), spec, set(names[:position]), set(names[position:]))
            if column is not None:
                self.columns.append(column)
        if not isinstance(constraints, (list, tuple)):
            self.problems.append(("constraints", f"constraints must be a list of expressions, not {constraints!r:.60}"))
            constraints = []
        for index, source in enumerate(constraints):
            where = f"constraints[{index}]"
            if self._expression_ok(where, source, set(names), set(), "a constraint"):
                self.constraints.append(source)

    # --- checks -------------------------------------------------------------------------------

    def _say(self, where: str, message: str) -> None:
        self.problems.append((where, message))

    def _expression_ok(self, where: str, source: Any, earlier: set[str], later: set[str], what: str) -> bool:
        if not isinstance(source, str) or not source.strip():
            self._say(where, f"{what} must be a Jinja expression, not {source!r:.60}")
            return False
        try:
            used = _refs(source)
        except ConfigError as exc:
            self._say(where, str(exc))
            return False
        ok = True
        for name in sorted(used - earlier):
            if name in later:
                self._say(where, f"{what} {source!r} refers to column {name!r}, which is not before it: "
                                 "a column may use only the columns declared before it")
                ok = False
            elif self._known_inputs:
                self._say(where, f"{what} {source!r} refers to {name!r}, which is not a column before it")
                ok = False
            else:
                self.reads.add(name)
        return ok

    def _column(self, name: str, spec: Any, earlier: set[str], later: set[str]) -> Column | None:
        where = f"columns.{name}"
        if name in RESERVED:
            self._say(where, f"{name!r} is reserved for recipe's own bookkeeping: name the column otherwise")
            return None
        if not isinstance(spec, dict):
            self._say(where, f"must be a mapping such as {{sampler: category, values: [...]}}, not {spec!r:.60}")
            return None
        column = Column(name, convert_to=spec.get("convert_to"), round=spec.get("round"),
                        drop=spec.get("drop", False))
        before = len(self.problems)
        if "expression" in spec:
            if "sampler" in spec and spec["sampler"] != "expression":
                self._say(where, "give either sampler or expression, not both")
            column.expression = spec["expression"]
            unknown = sorted(set(spec) - {"sampler", "expression", "convert_to", "round", "drop"})
            if unknown:
                self._say(where, f"unknown key {unknown[0]!r} (an expression column takes: expression, "
                                 "convert_to, round, drop)")
            self._expression_ok(where, column.expression, earlier, later | {name}, "expression")
        else:
            sampler = spec.get("sampler")
            kind = find_kind(sampler)
            if kind is None or not isinstance(sampler, str):
                self._say(where, f"unknown sampler {sampler!r} (one of: {', '.join(KINDS)}, or an expression)"
                          if sampler is not None else "needs a sampler (one of: " + ", ".join(KINDS) + ") or an expression")
                return None
            column.kind, column.sampler = kind, sampler
            base = {k: v for k, v in spec.items() if k not in COLUMN_KEYS}
            column.params = self._params(where, kind, sampler, base)
            conditional = spec.get("conditional") or {}
            if not isinstance(conditional, dict):
                self._say(f"{where}.conditional", "conditional must map an expression to the parameters it sets")
                conditional = {}
            for condition, changes in conditional.items():
                cwhere = f"{where}.conditional"
                if not isinstance(changes, dict):
                    self._say(cwhere, f"{condition!r} must map to parameters of {sampler}, not {changes!r:.60}")
                    continue
                if self._expression_ok(cwhere, condition, earlier, later | {name}, "condition"):
                    params = self._params(f"{cwhere}[{condition!r}]", kind, sampler, {**base, **changes})
                    column.variants.append((condition, params))
            for param in kind.refers:
                for params in column.all_params():
                    ref = params.get(param)
                    if isinstance(ref, str) and ref not in earlier:
                        self._say(where, f"{param}={ref!r} is " + ("a column after this one: a column may use only "
                                  "the columns declared before it" if ref in later else "not a column before this one"))
                        break
            self._column_links(where, column)
            if sampler == "dataset" and not self._known_inputs and column.params.get("replace") is False:
                self._say(where, "replace: false takes each row once in record order: it needs n (a sampled "
                                 "source), not columns added to incoming records")
        self._conversion(where, column)
        return column if len(self.problems) == before else None

    def _params(self, where: str, kind: Kind, sampler: str, params: dict) -> dict:
        unknown = sorted(set(params) - set(kind.names()))
        for name in unknown:
            self._say(where, f"unknown parameter {name!r} ({sampler} takes: {', '.join(kind.names())})")
        missing = [name for name in kind.required if name not in params or params[name] is None]
        for name in missing:
            self._say(where, f"missing parameter {name!r} ({sampler} needs: {', '.join(kind.required)})")
        if unknown or missing:
            return params
        full = {**kind.optional, **params}
        for message in kind.check(full):
            self._say(where, message)
        return full

    def _column_links(self, where: str, column: Column) -> None:
        """A subcategory's parent values all mapped; a timedelta's reference a datetime column."""
        earlier = {c.name: c for c in self.columns}
        for params in column.all_params():
            if column.sampler == "subcategory" and params.get("parent") in earlier:
                parent = earlier[params["parent"]]
                if parent.sampler not in ("category", "subcategory"):
                    self._say(where, f"parent={parent.name!r} must be a category or subcategory column, "
                                     f"not a {parent.sampler} column")
                    return
                values = params.get("values")
                mapping = values if isinstance(values, dict) else {}
                for value in _possible(parent):
                    if value not in mapping:
                        self._say(where, f"values has no entry for {value!r}, a value of its parent {parent.name!r}")
                        return
            if column.sampler == "timedelta" and params.get("reference") in earlier:
                reference = earlier[params["reference"]]
                if reference.sampler not in ("datetime", "timedelta"):
                    self._say(where, f"reference={reference.name!r} must be a datetime or timedelta column, "
                                     f"not a {reference.sampler} column")
                    return
                if reference.convert_to not in (None, "str"):
                    self._say(where, f"reference={reference.name!r} has convert_to; reference it before converting")
                    return

    def _conversion(self, where: str, column: Column) -> None:
        convert = column.convert_to
        if convert is not None and convert not in CONVERSIONS and not (isinstance(convert, str) and "%" in convert):
            self._say(where, f"convert_to must be int, float, str or a strftime format such as %Y-%m-%d, not {convert!r}")
        if convert is not None and "%" in str(convert) and column.sampler not in ("datetime", "timedelta"):
            self._say(where, f"convert_to={convert!r} is a date format: only datetime and timedelta columns take one")
        if column.round is not None and (isinstance(column.round, bool) or not isinstance(column.round, numbers.Integral)
                                         or column.round < 0):
            self._say(where, f"round must be a number of decimals >= 0, not {column.round!r}")
        if not isinstance(column.drop, bool):
            self._say(where, f"drop must be true or false, not {column.drop!r}")
        if convert == "int" and column.kind is not None:
            for params in column.all_params():
                params["_integer"] = True

    # --- what the stage declares ------------------------------------------------------------------

    @property
    def outputs(self) -> set[str]:
        return {c.name for c in self.columns if not c.drop}

    @property
    def per_record(self) -> bool:
        """Whether any value needs a record's earlier values (expressions, conditions, constraints)."""
        return bool(self.constraints) or any(c.expression or c.variants for c in self.columns)


def _possible(column: Column) -> list:
    out: list = []
    for params in column.all_params():
        values = params.get("values")
        for value in (v for children in values.values() for v in children) if isinstance(values, dict) else values or []:
            if value not in out:
                out.append(value)
    return out


# --- drawing --------------------------------------------------------------------------------------

def _convert(column: Column, values: np.ndarray) -> tuple[np.ndarray, list]:
    """The raw draw as the records show it: rounded and converted, as an array (for expressions
    evaluated over the whole partition) and as plain Python values (JSON-able)."""
    convert = column.convert_to
    if values.dtype.kind == "M":
        if convert and "%" in convert:
            out = [v.strftime(convert) for v in values.astype(object)]
        else:
            out = np.datetime_as_string(values).tolist()
        return _objects(out), out
    if values.dtype.kind in "biuf":
        if column.round is not None:
            values = np.round(values, column.round)
        if convert == "int":
            values = values.astype(np.int64)
        elif convert == "float":
            values = values.astype(np.float64)
        elif convert == "str":
            out = [str(v) for v in values.tolist()]
            return _objects(out), out
        return values, values.tolist()
    out = values.tolist()
    if column.round is not None:  # numpy's rounding, as for numeric arrays: one rule however it was computed
        out = [float(np.round(v, column.round)) if isinstance(v, float) else v for v in out]
    if convert in CONVERSIONS:
        cast = {"int": int, "float": float, "str": str}[convert]
        out = [cast(v) if v is not None else None for v in out]
    return _objects(out), out


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _evaluate(source: str, row: dict) -> Any:
    from recipe.stages.templates import evaluate

    return evaluate(source, row, f"expression {source!r}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class _Frame:
    """One attempt's columns for a set of records: arrays for whole-partition expressions, lists for
    the records, per-record dicts built only when an expression has to run record by record."""

    def __init__(self, size: int, base: list[dict] | None) -> None:
        self.size, self.base = size, base
        self.arrays: dict[str, np.ndarray] = {}
        self.lists: dict[str, list] = {}
        self.failed: dict[int, BaseException] = {}
        self._rows: list[dict] | None = None
        self._in_rows: list[str] = []

    def add(self, name: str, array: np.ndarray, values: list) -> None:
        self.arrays[name], self.lists[name] = array, values

    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = [dict(b) for b in self.base] if self.base is not None else [{} for _ in range(self.size)]
        for name in [n for n in self.lists if n not in self._in_rows]:
            for row, value in zip(self._rows, self.lists[name]):
                row[name] = value
            self._in_rows.append(name)
        return self._rows

    def evaluate(self, source: str) -> np.ndarray:
        """The expression's value for every record: over whole columns when the expression gives an
        elementwise answer (comparisons, arithmetic), else record by record; a record it fails on
        is marked failed."""
        names = _refs(source)
        if self.failed == {} and names <= self.arrays.keys():
            from recipe.stages.templates import compile_expression

            try:
                with np.errstate(all="raise"):
                    value = compile_expression(source)({name: self.arrays[name] for name in names})
                if isinstance(value, np.ndarray) and value.shape == (self.size,):
                    return value
            except Exception:  # noqa: BLE001 - not elementwise (and, in, filters, a failing value): per record
                pass
        out = np.empty(self.size, dtype=object)
        for i, row in enumerate(self.rows()):
            if i in self.failed:
                continue
            try:
                out[i] = _plain(_evaluate(source, row))
            except InputError as exc:
                self.failed[i] = exc
        return out

    def records(self) -> list[dict]:
        if self._rows is not None:
            return self.rows()
        names = list(self.lists)
        columns = [self.lists[name] for name in names]
        if self.base is None:
            return [dict(zip(names, values)) for values in zip(*columns)] if names else [{} for _ in range(self.size)]
        return [{**b, **dict(zip(names, values))} for b, values in zip(self.base, zip(*columns))]


class Outcome:
    """A partition's drawn rows (None where the record failed) and each failed record's error."""

    def __init__(self, size: int) -> None:
        self.rows: list[dict | None] = [None] * size
        self.errors: dict[int, BaseException] = {}


def draw(table: Table, seed: int, keys: np.ndarray, base: list[dict] | None, where: str) -> Outcome:
    """Every column for the records ``keys`` (with ``base`` their incoming fields, if any)."""
    outcome = Outcome(len(keys))
    pending = np.arange(len(keys))
    drawn = accepted = 0
    passes = [0] * len(table.constraints)
    checks = [0] * len(table.constraints)
    dropped = [c.name for c in table.columns if c.drop]
    attempt = 0
    while pending.size:
        frame = _attempt(table, seed, keys[pending], [base[i] for i in pending] if base else None, attempt)
        ok = np.ones(pending.size, dtype=bool)
        for i in frame.failed:
            ok[i] = False
        for number, source in enumerate(table.constraints):
            held = frame.evaluate(source)
            held = np.asarray(held, dtype=bool) if held.dtype != object else np.array([bool(v) for v in held])
            for i in frame.failed:
                ok[i] = False
            checks[number] += int(ok.sum())
            ok &= held
            passes[number] += int(ok.sum())
        records = frame.records()
        retry = np.zeros(pending.size, dtype=bool)
        for local, index in enumerate(pending.tolist()):
            if local in frame.failed:
                outcome.errors[index] = frame.failed[local]
            elif ok[local]:
                row = records[local]
                for name in dropped:
                    row.pop(name, None)
                outcome.rows[index] = row
            else:
                retry[local] = True
        drawn += pending.size - len(frame.failed)
        accepted += int(ok.sum())
        pending = pending[retry]
        attempt += 1
        if pending.size and ((drawn >= MIN_DRAWS and accepted < MIN_ACCEPTANCE * drawn) or attempt >= MAX_ATTEMPTS):
            rates = [(passes[i] / checks[i] if checks[i] else 1.0, i) for i in range(len(checks))]
            rate, worst = min(rates)
            raise ConfigError(f"{where}.constraints[{worst}] {table.constraints[worst]!r} accepted {rate:.2%} of "
                              f"{checks[worst]} draws: it rejects almost every record; loosen it or change the "
                              "columns' distributions")
    return outcome


def _attempt(table: Table, seed: int, keys: np.ndarray, base: list[dict] | None, attempt: int) -> _Frame:
    """One draw of every column for ``keys``."""
    size = len(keys)
    frame = _Frame(size, base)
    raw: dict[str, np.ndarray] = {}
    for column in table.columns:
        draws = Draws(keys, seed, column.name, attempt)
        if column.expression is not None:
            values = frame.evaluate(column.expression)
            raw[column.name] = values
            frame.add(column.name, *_convert(column, values))
            continue
        kind = column.kind
        assert kind is not None, "a column is an expression or has a sampler's kind"
        if column.variants:
            choice = np.full(size, -1)
            for number, (condition, _) in enumerate(column.variants):
                held = frame.evaluate(condition)
                held = np.asarray(held, dtype=bool) if held.dtype != object else np.array([bool(v) for v in held])
                choice[(choice == -1) & held] = number
            mixed: np.ndarray | None = None
            context = Context(raw)
            for number in range(-1, len(column.variants)):
                mask = choice == number
                if not mask.any():
                    continue
                params = column.params if number < 0 else column.variants[number][1]
                part = kind.draw(params, draws.subset(mask), context.subset(mask))
                if mixed is None:
                    mixed = np.empty(size, dtype=part.dtype if part.dtype.kind == "M" else object)
                mixed[mask] = part
            values = mixed if mixed is not None else np.empty(size, dtype=object)
        else:
            values = kind.draw(column.params, draws, Context(raw))
        raw[column.name] = values
        frame.add(column.name, *_convert(column, values))
    return frame
