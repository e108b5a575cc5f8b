"""What a recipe's sample stages declared about each output column: the share every value (or
bin of values) should take, per condition, so that a run's written records can be set against it.

The one owner of "which column was drawn from which declared distribution": it reads a stage's
parameters through :class:`~recipe.stages.samplers.table.Table`, the same parse, defaults and
conversions the run used, so a recipe never states its distributions twice. It answers only where
the declaration fixes a distribution of the written values:

- ``category`` (``values``/``weights``; no weights is uniform), ``subcategory`` (uniform within
  each parent value), ``bernoulli``, ``binomial``, ``poisson``: a share per value;
- ``uniform`` (integer bounds with ``convert_to: int``: a share per integer; else ten equal-width
  bins) and ``gaussian`` (ten bins between -2 and +2 standard deviations, and the two tails);
- ``conditional`` columns: one distribution per condition, the records grouped by evaluating the
  conditions on their own (written) earlier values, as the stage did.

A column a constraint touches (directly, or through a column it depends on) is redrawn until the
constraint holds, so its declared shares do not hold: it is listed with that reason instead.
Other samplers (datetime, timedelta, uuid, person, dataset, scipy, expressions) are not listed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recipe.stages.samplers.kinds import _binomial_cdf, _poisson_cdf
from recipe.stages.samplers.table import Column, Table, _convert, _refs

GAUSSIAN_EDGES = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)  # in standard deviations from the mean
UNIFORM_BINS = 10
MAX_INTEGERS = 200  # a discrete uniform over more integers than this is compared in bins
TAIL = 1e-9  # binomial and poisson values less likely than this are lumped into their neighbours' cell


def value_key(value: Any) -> str:
    """A written value as one comparable text: numbers by value (``1`` and ``1.0`` alike, as Arrow
    may read either), everything else as its JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and abs(number) < 2 ** 53:
            return str(int(number))
        return repr(number)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class Distribution:
    """The declared shares of one group of records: ``cells`` in order, each a label and a share.

    A written value falls in one cell (:meth:`cell`): its own value's cell, or the bin holding it;
    ``None`` when the declaration cannot produce it."""

    cells: list[str]
    shares: list[float]
    keys: dict[str, int] = field(default_factory=dict)  # value_key -> cell (discrete)
    edges: list[float] | None = None  # bin edges (binned): cell i is [edges[i], edges[i+1])
    ordered: bool = False  # cells are ordered numbers: small cells may merge with their neighbours
    _seen: dict = field(default_factory=dict, repr=False)  # (type, written value) -> cell, for speed

    def cell(self, value: Any) -> int | None:
        if self.edges is None:
            try:
                return self._seen[(type(value), value)]
            except (KeyError, TypeError):  # not seen yet, or unhashable
                found = self.keys.get(value_key(value))
            if len(self._seen) < 10_000:
                try:
                    self._seen[(type(value), value)] = found
                except TypeError:
                    pass
            return found
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        edges = self.edges
        if value < edges[0] or value > edges[-1]:
            return None
        return min(len(self.cells) - 1, int(np.searchsorted(edges, value, side="right")) - 1)


@dataclass
class Declared:
    """One output column of a sample stage and what its stage declared about it."""

    column: str
    stage: str
    sampler: str
    by: list[str]  # the written fields that pick a record's distribution (conditions, a parent)
    untested: str | None = None  # why its written values cannot be set against the declaration
    _source: Column | None = None
    _cache: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The declaration in a line, as the recipe says it."""
        column = self._source
        if column is None:
            return self.sampler
        names = column.kind.names() if column.kind else list(column.params)
        shown = {k: column.params[k] for k in names if k in column.params and column.params[k] is not None}
        text = f"{self.sampler} " + ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in shown.items())
        if column.variants:
            text += "; conditional on " + ", ".join(repr(c) for c, _ in column.variants)
        if column.convert_to:
            text += f"; convert_to={column.convert_to}"
        return text

    def group(self, row: dict) -> tuple[str, Distribution | None] | None:
        """The group of one record (see :meth:`groups`)."""
        return self.groups({name: [row.get(name)] for name in self.by}, 1)[0]

    def groups(self, columns: dict[str, list], size: int) -> list[tuple[str, Distribution | None] | None]:
        """For ``size`` records (``columns``: their values of the ``by`` fields), each one's group
        and its declared distribution (None when the declaration fixes none); None for a record
        whose conditions cannot be evaluated (a field missing or null, or an expression failing on it).

        Conditions are evaluated as the stage evaluates them (its frame: over whole columns where
        the expression is elementwise), so a condition on a continuous column costs no Jinja call
        per record."""
        column = self._source
        assert column is not None
        from recipe.stages.samplers.table import _Frame

        known = np.ones(size, dtype=bool)
        for name in self.by:
            known &= np.fromiter((v is not None for v in columns[name]), dtype=bool, count=size)
        rows = np.nonzero(known)[0]
        frame = _Frame(len(rows), None)
        for name in self.by:
            values = [columns[name][i] for i in rows]
            frame.add(name, _array(values), values)
        choice = np.full(len(rows), -1)
        for number, (condition, _) in enumerate(column.variants):
            held = frame.evaluate(condition)
            held = np.asarray(held, dtype=bool) if held.dtype != object else np.array([bool(v) for v in held], dtype=bool)
            choice[(choice == -1) & held] = number
        failed = np.zeros(len(rows), dtype=bool)
        failed[list(frame.failed)] = True
        out: list[tuple[str, Distribution | None] | None] = [None] * size
        for local, index in enumerate(rows.tolist()):
            if failed[local]:
                continue
            number = int(choice[local])
            params = column.params if number < 0 else column.variants[number][1]
            label = "" if not column.variants else ("otherwise (no condition holds)" if number < 0
                                                     else f"when {column.variants[number][0]}")
            parent = columns[params["parent"]][index] if column.sampler == "subcategory" else None
            key = (number, value_key(parent)) if parent is not None else (number, "")
            if key not in self._cache:
                self._cache[key] = self._distribution(params, label, parent)
            out[index] = self._cache[key]
        return out

    def _distribution(self, params: dict, label: str, parent: Any) -> tuple[str, Distribution | None]:
        column = self._source
        assert column is not None
        if column.sampler != "subcategory":
            return label, distribution(column, params)
        label = (label + ", " if label else "") + f"{params['parent']} = {parent}"
        children = (params.get("values") or {}).get(parent)
        return label, (_discrete(column, list(children), None) if children else None)


def _array(values: list) -> np.ndarray:
    """Written values as the stage held them: int64 or float64 for numbers, objects otherwise."""
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _discrete(column: Column, values: list, weights: list | None, ordered: bool = False) -> Distribution | None:
    """Shares of ``values`` (weights, or equal) as the records show them: converted as the stage converts."""
    w = np.asarray(weights if weights is not None else [1.0] * len(values), dtype=np.float64)
    raw = np.empty(len(values), dtype=object)
    raw[:] = values
    try:
        _, shown = _convert(column, np.asarray(values) if ordered else raw)
    except (TypeError, ValueError):
        return None
    out = Distribution([], [], ordered=ordered)
    for value, weight in zip(shown, w.tolist()):
        key = value_key(value)
        if key in out.keys:
            out.shares[out.keys[key]] += weight
        else:
            out.keys[key] = len(out.cells)
            out.cells.append(value if isinstance(value, str) else key)
            out.shares.append(weight)
    total = sum(out.shares)
    out.shares = [s / total for s in out.shares]
    return out


def _pmf(column: Column, cdf: np.ndarray) -> Distribution | None:
    pmf = np.diff(np.concatenate([[0.0], cdf / cdf[-1]]))
    keep = np.nonzero(pmf > TAIL)[0]
    low, high = int(keep.min()), int(keep.max())
    shares = pmf[low:high + 1].copy()
    shares[0] += pmf[:low].sum()
    shares[-1] += pmf[high + 1:].sum()
    return _discrete(column, list(range(low, high + 1)), shares.tolist(), ordered=True)


def _binned(edges: list[float], shares: list[float]) -> Distribution:
    cells = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}" + (")" if i < len(edges) - 2 else "]") for i in range(len(edges) - 1)]
    return Distribution(cells, shares, edges=edges, ordered=True)


def distribution(column: Column, params: dict) -> Distribution | None:
    """What ``params`` of ``column``'s sampler declare about the written values, or None."""
    sampler, convert = column.sampler, column.convert_to
    if convert not in (None, "int", "float", "str") or (convert and "%" in str(convert)):
        return None
    if sampler == "category":
        return _discrete(column, list(params["values"]), params.get("weights"))
    if sampler == "bernoulli":
        return _discrete(column, [0, 1], [1 - params["p"], params["p"]], ordered=True)
    if sampler == "binomial" and column.round is None and convert in (None, "int"):
        return _pmf(column, _binomial_cdf(int(params["n"]), float(params["p"])))
    if sampler == "poisson" and column.round is None and convert in (None, "int"):
        return _pmf(column, _poisson_cdf(float(params["mean"])))
    if sampler == "uniform":
        low, high = params["low"], params["high"]
        integers = float(low).is_integer() and float(high).is_integer()
        if convert == "int" and integers and high - low < MAX_INTEGERS:
            span = list(range(int(low), int(high) + 1))
            return _discrete(column, span, None, ordered=True)
        if convert in (None, "float") and high > low and _fine(column, (high - low) / UNIFORM_BINS):
            edges = np.linspace(low, high, UNIFORM_BINS + 1).tolist()
            return _binned(edges, [1 / UNIFORM_BINS] * UNIFORM_BINS)
        return None
    if sampler == "gaussian" and convert in (None, "float") and params["stddev"] > 0 and _fine(column, params["stddev"] / 2):
        mean, sd = params["mean"], params["stddev"]
        z = [-math.inf, *GAUSSIAN_EDGES, math.inf]
        cdf = [0.5 * (1 + math.erf(v / math.sqrt(2))) if math.isfinite(v) else (0.0 if v < 0 else 1.0) for v in z]
        shares = [cdf[i + 1] - cdf[i] for i in range(len(z) - 1)]
        edges = [mean + sd * v for v in z]
        dist = _binned(edges, shares)
        dist.cells[0], dist.cells[-1] = f"< {edges[1]:.4g}", f">= {edges[-2]:.4g}"
        return dist
    return None


def _fine(column: Column, width: float) -> bool:
    """Whether ``round`` leaves bins of ``width`` as they are (rounding moves a value by far less than a bin)."""
    return column.round is None or 10.0 ** -column.round <= width / 1000


COMPARED = ("category", "subcategory", "bernoulli", "binomial", "poisson", "uniform", "gaussian")


def _depends(table: Table) -> dict[str, set[str]]:
    """Each column's earlier columns and incoming fields it depends on (conditions, expressions,
    a parent or reference)."""
    out: dict[str, set[str]] = {}
    for column in table.columns:
        used: set[str] = set()
        if column.expression:
            used |= _refs(column.expression)
        for condition, _ in column.variants:
            used |= _refs(condition)
        for param in (column.kind.refers if column.kind else ()):
            for params in column.all_params():
                if isinstance(params.get(param), str):
                    used.add(params[param])
        out[column.name] = used
    return out


def _constrained(table: Table) -> dict[str, str]:
    """Columns a constraint reaches (itself, or a column depending on it), with the constraint."""
    depends = _depends(table)
    found: dict[str, str] = {}
    for source in table.constraints:
        todo = list(_refs(source))
        while todo:
            name = todo.pop()
            if name in found:
                continue
            found[name] = source
            todo.extend(depends.get(name, ()))
    return found


def declared_columns(stage: str, params: dict) -> list[Declared]:
    """What the sample stage ``stage`` (its config ``params``: columns, constraints, n) declares
    about each of its written columns that has a declared distribution."""
    table = Table(params.get("columns"), params.get("constraints") or [], known_inputs=params.get("n") is not None)
    constrained = _constrained(table)
    out = []
    for column in table.columns:
        if column.drop or column.kind is None or column.sampler not in COMPARED:
            continue
        by: list[str] = []
        for condition, _ in column.variants:
            by += [name for name in sorted(_refs(condition)) if name not in by]
        if column.sampler == "subcategory":
            by += [p["parent"] for p in column.all_params() if p["parent"] not in by]
        found = Declared(column.name, stage, column.sampler, by, _source=column)
        if column.name in constrained:
            found.untested = (f"the constraint {constrained[column.name]!r} redraws records until it holds, so "
                              "the declared shares do not hold for this column")
        elif not any(_would_compare(column, p) for p in column.all_params()):
            found.untested = "its parameters and conversion (convert_to, round) fix no distribution to compare"
        out.append(found)
    return out


def _would_compare(column: Column, params: dict) -> bool:
    return column.sampler == "subcategory" or distribution(column, params) is not None
