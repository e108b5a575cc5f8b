"""Sampled columns set against their declared distributions: the written values counted per
declared value (or bin) and condition, in the same streamed pass as the profiles, and a
chi-square goodness-of-fit test per group.

What was declared comes from the run folder (``run.json``'s identity: the resolved recipe), read
by :mod:`recipe.stages.samplers.declared`, the one owner of what a sample stage declares. The
p-value is the chi-square distribution's upper tail computed here (the regularized incomplete
gamma function, as Numerical Recipes computes it), so it needs no scipy. Cells expected to hold
fewer than :data:`MIN_EXPECTED` records are pooled (with their neighbours for ordered values)
so the test's approximation holds; a written value the declaration cannot produce makes the
group fail outright (p = 0).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from recipe.stages.samplers.declared import Declared, Distribution, value_key

SIGNIFICANCE = 0.001  # a group whose p-value is below this (over the groups tested in its column) is flagged
MIN_EXPECTED = 5.0
UNDECLARED_SHOWN = 10
UNDECLARED_KEPT = 1_000  # distinct undeclared values counted one by one; the rest together
OTHER_UNDECLARED = "(other undeclared values)"


# ---- the chi-square distribution's upper tail, without scipy ---------------------------------------

def _gamma_series(a: float, x: float) -> float:
    """P(a, x) by its series (x < a + 1)."""
    term = total = 1.0 / a
    n = a
    for _ in range(10_000):
        n += 1
        term *= x / n
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_fraction(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (x >= a + 1), Lentz's method."""
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square distributed with ``df`` degrees of freedom."""
    if statistic <= 0:
        return 1.0
    if math.isinf(statistic):
        return 0.0
    a, x = df / 2.0, statistic / 2.0
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return min(1.0, _gamma_fraction(a, x))


def _pool(observed: list[int], expected: list[float], ordered: bool) -> tuple[list[int], list[float]]:
    """Cells merged until each expects at least :data:`MIN_EXPECTED` records (neighbours for
    ordered values; the small ones into one pooled cell otherwise)."""
    obs, exp = list(observed), list(expected)
    if ordered:
        i = 0
        while len(exp) > 1 and i < len(exp):
            if exp[i] >= MIN_EXPECTED:
                i += 1
                continue
            j = i + 1 if i + 1 < len(exp) else i - 1
            if i > 0 and i + 1 < len(exp) and exp[i - 1] < exp[i + 1]:
                j = i - 1
            low, high = min(i, j), max(i, j)
            obs[low:high + 1] = [obs[low] + obs[high]]
            exp[low:high + 1] = [exp[low] + exp[high]]
            i = low
        return obs, exp
    small = [k for k, e in enumerate(exp) if e < MIN_EXPECTED]
    if len(small) < 1 or len(exp) == 1:
        return obs, exp
    big = [k for k in range(len(exp)) if k not in small]
    pooled_o, pooled_e = sum(obs[k] for k in small), sum(exp[k] for k in small)
    obs, exp = [obs[k] for k in big], [exp[k] for k in big]
    if pooled_e < MIN_EXPECTED and exp:
        k = min(range(len(exp)), key=lambda m: exp[m])
        obs[k] += pooled_o
        exp[k] += pooled_e
    else:
        obs.append(pooled_o)
        exp.append(pooled_e)
    return obs, exp


def recipe_declarations(recipe: dict) -> tuple[list[Declared], list[str]]:
    """Every sample stage's declared columns in a recipe's resolved config (the run's identity),
    a later stage's column replacing an earlier one's of the same name; and what could not be read."""
    from recipe.config.targets import allowed_class
    from recipe.errors import ConfigError
    from recipe.stages.base import Stage
    from recipe.stages.io.sample import SampleStage
    from recipe.stages.samplers.declared import declared_columns

    found: dict[str, Declared] = {}
    problems: list[str] = []
    for name, config in ((recipe or {}).get("stages") or {}).items():
        if not isinstance(config, dict):
            continue
        try:
            cls = allowed_class(config.get("_target_"), Stage, "_target_")
        except ConfigError:
            continue
        if not issubclass(cls, SampleStage):
            continue
        try:
            for declared in declared_columns(str(name), config):
                found[declared.column] = declared
        except Exception as exc:  # noqa: BLE001 - a declaration the report cannot read is said, not raised
            problems.append(f"stage {name}'s declared columns cannot be read: {type(exc).__name__}: {exc}")
    return list(found.values()), problems


# ---- counting -------------------------------------------------------------------------------------

@dataclass
class _Group:
    label: str
    dist: Distribution | None
    counts: list[int] = field(default_factory=list)
    undeclared: Counter = field(default_factory=Counter)
    records: int = 0

    def add(self, value: Any, count: int) -> None:
        self.records += count
        if self.dist is None:
            return
        if not self.counts:
            self.counts = [0] * len(self.dist.cells)
        cell = self.dist.cell(value)
        if cell is None:
            self.add_undeclared(value, count)
        else:
            self.counts[cell] += count

    def add_undeclared(self, value: Any, count: int) -> None:
        """A value the declaration cannot produce (kept one by one up to :data:`UNDECLARED_KEPT` of them)."""
        key = value_key(value)
        if key not in self.undeclared and len(self.undeclared) >= UNDECLARED_KEPT:
            key = OTHER_UNDECLARED
        self.undeclared[key] += count


@dataclass
class _Column:
    declared: Declared
    groups: dict[str, _Group] = field(default_factory=dict)
    present: int = 0
    missing: int = 0
    unevaluated: int = 0

    def add(self, combos: list[tuple[dict, int]]) -> None:
        """Distinct combinations of the column's and its ``by`` fields' values, each with its count."""
        d, name = self.declared, self.declared.column
        self.missing += sum(count for row, count in combos if row.get(name) is None)
        combos = [(row, count) for row, count in combos if row.get(name) is not None]
        self.present += sum(count for _, count in combos)
        if d.untested or not combos:
            return
        found = d.groups({by: [row.get(by) for row, _ in combos] for by in d.by}, len(combos))
        for (row, count), group_of in zip(combos, found):
            if group_of is None:
                self.unevaluated += count
                continue
            label, dist = group_of
            group = self.groups.get(label)
            if group is None:
                group = self.groups[label] = _Group(label, dist)
            group.add(row[name], count)

    def add_numbers(self, column: Any) -> bool:
        """A whole numeric Arrow column of an unconditional binned column at once (numpy); False
        when the column is not that (the caller counts it value by value)."""
        import numpy as np
        import pyarrow as pa

        d = self.declared
        if d.by or d.untested or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return False
        found = d.group({})
        dist = found[1] if found is not None else None
        if found is None or dist is None or dist.edges is None:
            return False
        label = found[0]
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        self.missing += column.null_count
        values = column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        self.present += len(values)
        group = self.groups.get(label)
        if group is None:
            group = self.groups[label] = _Group(label, dist)
        if not group.counts:
            group.counts = [0] * len(dist.cells)
        edges = np.asarray(dist.edges, dtype=np.float64)
        inside = (values >= edges[0]) & (values <= edges[-1])  # NaN is outside
        cells = np.minimum(np.searchsorted(edges, values[inside], side="right") - 1, len(dist.cells) - 1)
        for cell, count in enumerate(np.bincount(cells, minlength=len(dist.cells)).tolist()):
            group.counts[cell] += count
        outside, times = np.unique(values[~inside], return_counts=True)
        for value, count in zip(outside.tolist(), times.tolist()):
            group.add_undeclared(value, count)
        group.records += len(values)
        return True


class Fits:
    """Fed every written part (as the profiler is); :meth:`results` gives each declared column's comparison."""

    def __init__(self, declared: list[Declared]) -> None:
        self.columns = [_Column(d) for d in declared]

    @classmethod
    def of_run(cls, info: dict | None, problems: list[str]) -> "Fits":
        """From ``run.json`` (its identity's resolved recipe); nothing declared when it is missing."""
        recipe = ((info or {}).get("identity") or {}).get("recipe") if isinstance(info, dict) else None
        if not isinstance(recipe, dict):
            return cls([])
        declared, said = recipe_declarations(recipe)
        problems.extend(said)
        return cls(declared)

    def add_records(self, records: list[dict]) -> None:
        for column in self.columns:
            names = [column.declared.column, *column.declared.by]
            self._combos(column, _python_combos([[r.get(n) for r in records] for n in names], names))

    def add_table(self, table: Any) -> None:
        for column in self.columns:
            names = [column.declared.column, *column.declared.by]
            if column.declared.column not in table.column_names:
                column.missing += table.num_rows
                continue
            if not column.add_numbers(table.column(column.declared.column)):
                self._combos(column, _arrow_combos(table, names))

    @staticmethod
    def _combos(column: _Column, combos: Iterable[tuple[dict, int]]) -> None:
        column.add(list(combos))

    def results(self) -> list[dict]:
        return [_result(c) for c in self.columns]


def _python_combos(lists: list[list], names: list[str]) -> Iterable[tuple[dict, int]]:
    counts: Counter = Counter()
    first: dict = {}
    for values in zip(*lists):
        key = tuple(value_key(v) if v is not None else None for v in values)
        counts[key] += 1
        if key not in first:
            first[key] = values
    return ((dict(zip(names, first[key])), n) for key, n in counts.items())


def _arrow_combos(table: Any, names: list[str]) -> Iterable[tuple[dict, int]]:
    """Each distinct combination of ``names``' values in the part, with its count (Arrow's group-by;
    record by record for what Arrow cannot group, such as lists)."""
    import pyarrow as pa

    present = [n for n in dict.fromkeys(names) if n in table.column_names]
    try:
        grouped = table.select(present).group_by(present).aggregate([([], "count_all")])
        columns = [grouped.column(n).to_pylist() for n in present]
        counts = grouped.column("count_all").to_pylist()
        return ((dict(zip(present, values)), n) for values, n in zip(zip(*columns), counts))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
        return _python_combos([table.column(n).to_pylist() for n in present], present)


# ---- the comparison -------------------------------------------------------------------------------

def _group_result(group: _Group) -> dict:
    out: dict[str, Any] = {"group": group.label, "records": group.records}
    dist = group.dist
    if dist is None:
        out["note"] = "the declaration fixes no distribution for this group"
        return out
    counts = group.counts or [0] * len(dist.cells)
    judged = sum(counts)
    out["cells"] = [{"value": label, "declared": share, "observed": (c / judged if judged else 0.0), "count": c,
                     "expected": share * group.records}
                    for label, share, c in zip(dist.cells, dist.shares, counts)]
    impossible = sum(group.undeclared.values()) + sum(c for c, s in zip(counts, dist.shares) if s == 0)
    out["undeclared"] = [[value, n] for value, n in group.undeclared.most_common(UNDECLARED_SHOWN)]
    out["undeclared_records"] = sum(group.undeclared.values())
    if impossible:
        out.update(chi2=math.inf, df=None, p=0.0, flagged=True,
                   note=f"{impossible} records hold values the declaration cannot produce")
        return out
    kept = [(c, s * group.records) for c, s in zip(counts, dist.shares) if s > 0]
    obs, exp = _pool([c for c, _ in kept], [e for _, e in kept], dist.ordered)
    out["pooled"] = len(obs) < len(kept)
    df = len(obs) - 1
    if df < 1 or group.records == 0:
        out.update(chi2=None, df=None, p=None, flagged=False, note="one possible value: nothing to test")
        return out
    statistic = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    p = chi2_sf(statistic, df)
    out.update(chi2=statistic, df=df, p=p, flagged=False)  # flagged per column: see _result
    if min(exp) < MIN_EXPECTED:
        out["note"] = "too few records for every cell to expect 5: the p-value is rough"
    return out


def _result(column: _Column) -> dict:
    d = column.declared
    out: dict[str, Any] = {"column": d.column, "stage": d.stage, "sampler": d.sampler, "declared": d.describe(),
                           "by": d.by, "records": column.present, "missing": column.missing,
                           "unevaluated": column.unevaluated, "untested": d.untested, "groups": []}
    if not column.present and not d.untested:
        out["untested"] = "not in the written records (dropped, renamed or reshaped by a later stage)"
    if d.untested or not column.present:
        out["flagged"] = False
        return out
    groups = [_group_result(g) for g in sorted(column.groups.values(), key=lambda g: (-g.records, g.label))]
    tested = [g for g in groups if g.get("p") is not None]
    for group in tested:  # Bonferroni: a column tested in k groups flags below SIGNIFICANCE / k
        group["flagged"] = group["p"] < SIGNIFICANCE / len(tested)
    out["groups"], out["flagged"] = groups, any(g["flagged"] for g in groups if "flagged" in g)
    return out


def _json_number(value: Any) -> Any:
    """inf as text (the page's JSON allows no infinity)."""
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def for_page(results: list[dict]) -> list[dict]:
    """The results with infinities as text, for the page's JSON block."""
    return [{**r, "groups": [{k: _json_number(v) for k, v in g.items()} for g in r["groups"]]} for r in results]


def note_losses(results: list[dict], funnel_rows: list[dict]) -> None:
    """Say, on each column, how many records were lost after its stage drew it (filters, dedup,
    failures): the observed shares are of the written records only."""
    names = [r["stage"] for r in funnel_rows]
    for result in results:
        start = names.index(result["stage"]) + 1 if result["stage"] in names else 1
        lost = sum((r.get("errors") or 0) + (r.get("dropped") or 0) for r in funnel_rows[start:])
        if lost:
            result["lost"] = lost


# ---- the page's part ------------------------------------------------------------------------------

def _e(value: Any) -> str:
    import html

    return html.escape(str(value), quote=True)


def _share(value: float) -> str:
    return f"{100 * value:.2f}%"


def _figure(group: dict) -> str:
    if group.get("chi2") is None:
        return _e(group.get("note") or "not tested")
    if group["p"] == 0.0 and math.isinf(group["chi2"]):
        return f"chi-square infinite, p = 0 ({_e(group['note'])})"
    return f"chi-square {group['chi2']:.2f} on {group['df']} df, p = {group['p']:.3g}"


def _verdict(result: dict) -> str:
    if result.get("untested"):
        return "not tested"
    if result["flagged"]:
        return "differs from the declaration"
    if any(g.get("p") is not None for g in result["groups"]):
        return "consistent with the declaration"
    return "not tested"


def summary_table(results: list[dict]) -> str:
    """One row per declared column: its declaration, its test and the verdict."""
    if not results:
        return ""
    rows = []
    for r in results:
        tested = [g for g in r["groups"] if g.get("p") is not None]
        figure = "; ".join(f"{_e(g['group']) + ': ' if g['group'] else ''}{_figure(g)}" for g in tested[:3])
        if len(tested) > 3:
            figure += f"; {len(tested) - 3} more groups"
        reason = r.get("untested") or ""
        rows.append(f"<tr data-fit='{_e(r['column'])}' class='{'flagged' if r['flagged'] else ''}'><td>{_e(r['column'])}</td>"
                    f"<td>{_e(r['stage'])}</td><td>{_e(r['declared'])}</td><td>{_e(r['records'])}</td>"
                    f"<td class=figure>{figure or _e(reason)}</td><td class=verdict>{_e(_verdict(r))}</td></tr>")
    return ("<h3>Sampled columns against their declared distributions</h3>"
            f"<p>Chi-square goodness of fit per column and condition (p-value computed without scipy). A group is "
            f"flagged when its p-value is below {SIGNIFICANCE} divided by the groups tested in its column; with many "
            "columns, expect an occasional flag by chance. The declarations are the run's own, from run.json.</p>"
            "<table class=grid id=declared><tr><th>field</th><th>stage</th><th>declared</th><th>records</th>"
            f"<th>goodness of fit</th><th>verdict</th></tr>{''.join(rows)}</table>")


CHARTED_GROUPS = 4  # groups per column drawn as a chart (every group has its table)


def field_block(result: dict, number: int, charts: list) -> str:
    """A field card's comparison: per group, declared and observed shares (a table and a chart)."""
    parts = [f"<div class=fit data-fit='{_e(result['column'])}'><h4>declared: {_e(result['declared'])}</h4>"]
    if result.get("untested"):
        parts.append(f"<p class=untested>Not tested: {_e(result['untested'])}.</p></div>")
        return "".join(parts)
    if result.get("lost"):
        parts.append(f"<p class=note>{_e(result['lost'])} records were filtered, deduplicated or failed after this "
                     "column was drawn: the observed shares are of the written records.</p>")
    if result["unevaluated"]:
        parts.append(f"<p class=note>{_e(result['unevaluated'])} records: their conditions could not be evaluated "
                     f"on the written fields ({_e(', '.join(result['by']))}); left out.</p>")
    for index, group in enumerate(result["groups"]):
        title = group["group"] or "all records"
        parts.append(f"<div class='fit-group{' flagged' if group.get('flagged') else ''}' data-group='{_e(group['group'])}'>"
                     f"<h5>{_e(title)} ({_e(group['records'])} records)</h5>")
        cells = group.get("cells")
        if not cells:
            parts.append(f"<p>{_e(group.get('note') or '')}</p></div>")
            continue
        rows = "".join(f"<tr data-value='{_e(c['value'])}'><td class=val>{_e(c['value'])}</td>"
                       f"<td class=declared-share>{_share(c['declared'])}</td><td class=observed-share>{_share(c['observed'])}"
                       f"</td><td>{_e(c['count'])}</td></tr>" for c in cells)
        rows += "".join(f"<tr class=undeclared data-value='{_e(v)}'><td class=val>{_e(v)}</td><td>not declared</td>"
                        f"<td></td><td>{_e(n)}</td></tr>" for v, n in group.get("undeclared") or [])
        parts.append("<table class=grid><tr><th>value</th><th>declared</th><th>observed</th><th>records</th></tr>"
                     f"{rows}</table><p class=figure>{_figure(group)}"
                     + (" <b class=flag>flagged: differs from the declaration</b>" if group.get("flagged") else "")
                     + (" (cells expected to hold fewer than 5 records pooled)" if group.get("pooled") else "") + "</p>")
        if index < CHARTED_GROUPS and len(cells) > 1:
            chart_id = f"chart-fit-{number}-{index}"
            labels = [c["value"] for c in cells]
            charts.append({"id": chart_id, "data": [
                {"type": "bar", "name": "declared", "x": labels, "y": [c["declared"] for c in cells]},
                {"type": "bar", "name": "observed", "x": labels, "y": [c["observed"] for c in cells]}],
                "layout": {"title": {"text": f"declared and observed shares: {title}", "font": {"size": 12}},
                           "barmode": "group", "height": 240, "margin": {"l": 50, "r": 10, "t": 30, "b": 60},
                           "xaxis": {"type": "category"}, "yaxis": {"title": {"text": "share"}, "tickformat": ".0%"}}})
            parts.append(f"<div class=chart id='{chart_id}'></div>")
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)
