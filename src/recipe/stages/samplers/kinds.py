"""The sampler kinds: each one's parameters, their checks, and its vectorised draw.

A draw maps keyed uniforms (:class:`~recipe.stages.samplers.keyed.Draws`) through the distribution's
inverse CDF (a cumulative table for the discrete ones), so the same uniform gives the same value
whatever else is drawn, and a conditional column only changes parameters, not randomness.
Parameter names are Data Designer's.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from recipe.config.distributions import check_weights
from recipe.stages.samplers.keyed import Draws

UNITS = {"D": "D", "h": "s", "m": "s", "s": "s"}  # the unit of a draw -> the datetime64 unit it is kept in
_SECONDS = {"D": 86400, "h": 3600, "m": 60, "s": 1}


class Context:
    """The earlier columns' raw values for the records being drawn (numpy arrays, aligned)."""

    def __init__(self, raw: dict[str, np.ndarray]) -> None:
        self.raw = raw

    def subset(self, mask: np.ndarray) -> "Context":
        return Context({name: values[mask] for name, values in self.raw.items()})


@dataclass(frozen=True)
class Kind:
    """A sampler: required and optional parameters, a check of their values, and a draw."""

    required: tuple[str, ...]
    optional: dict
    check: Callable[[dict], list[str]]
    draw: Callable[[dict, Draws, Context], np.ndarray]
    refers: tuple[str, ...] = ()  # parameters that name an earlier column

    def names(self) -> list[str]:
        return list(self.required) + list(self.optional)


def _number(params: dict, name: str, *, integer: bool = False) -> list[str]:
    value = params.get(name)
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted) or (not integer and not math.isfinite(value)):
        return [f"{name} must be {'an integer' if integer else 'a number'}, not {value!r}"]
    return []


def _probability(params: dict, name: str = "p") -> list[str]:
    problems = _number(params, name)
    if not problems and not 0 <= params[name] <= 1:
        problems.append(f"{name}={params[name]!r} is out of range: it must be between 0 and 1")
    return problems


def _pick(values: list, weights: list | None, u: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(np.asarray(weights if weights is not None else [1] * len(values), dtype=np.float64))
    index = np.searchsorted(cumulative / cumulative[-1], u, side="right")
    np.minimum(index, len(values) - 1, out=index)
    return _objects(values)[index]


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


# --- category, subcategory ------------------------------------------------------------------

def _check_category(p: dict) -> list[str]:
    return check_weights(p.get("values"), p.get("weights"))


def _draw_category(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    return _pick(p["values"], p.get("weights"), d.u())


def _check_subcategory(p: dict) -> list[str]:
    values = p.get("values")
    if not isinstance(p.get("parent"), str):
        return [f"parent must name an earlier category column, not {p.get('parent')!r}"]
    if not isinstance(values, dict) or not values:
        return [f"values must map each value of {p['parent']!r} to a list of its subcategories"]
    return [f"values[{key!r}] must be a non-empty list, not {children!r:.60}"
            for key, children in values.items() if not isinstance(children, (list, tuple)) or not children]


def _draw_subcategory(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    parents = ctx.raw[p["parent"]]
    u = d.u()
    out = np.empty(len(d), dtype=object)
    for parent, children in p["values"].items():
        mask = parents == parent
        if mask.any():
            out[mask] = _pick(children, None, u[mask])
    return out


# --- continuous and counting distributions ---------------------------------------------------

def _check_uniform(p: dict) -> list[str]:
    problems = _number(p, "low") + _number(p, "high")
    if not problems and p["low"] > p["high"]:
        problems.append(f"low={p['low']!r} > high={p['high']!r}: low must not exceed high")
    return problems


def _draw_uniform(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    low, high = p["low"], p["high"]
    if p.get("_integer") and float(low).is_integer() and float(high).is_integer():
        # convert_to: int over integer bounds is the discrete uniform on low..high, both included
        return (np.floor(d.u() * (int(high) - int(low) + 1)) + int(low)).astype(np.int64)
    return low + d.u() * (high - low)


def _check_gaussian(p: dict) -> list[str]:
    problems = _number(p, "mean") + _number(p, "stddev")
    if not problems and p["stddev"] < 0:
        problems.append(f"stddev={p['stddev']!r} is out of range: it must be >= 0")
    return problems


def _draw_gaussian(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    # Box-Muller over two keyed uniforms: exact, and no scipy needed
    return p["mean"] + p["stddev"] * np.sqrt(-2.0 * np.log(d.u(0))) * np.cos(2.0 * np.pi * d.u(1))


def _draw_bernoulli(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    return (d.u() < p["p"]).astype(np.int64)


def _check_binomial(p: dict) -> list[str]:
    problems = _number(p, "n", integer=True) + _probability(p)
    if not problems and not 0 <= p["n"] <= 10_000_000:
        problems.append(f"n={p['n']!r} is out of range: it must be between 0 and 10000000")
    return problems


@lru_cache(maxsize=64)
def _binomial_cdf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1, dtype=np.float64)
    if p in (0.0, 1.0):
        pmf = (k == (n if p == 1.0 else 0)).astype(np.float64)
    else:
        log_choose = math.lgamma(n + 1) - _lgamma_array(k + 1) - _lgamma_array(n - k + 1)
        pmf = np.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p))
    return np.cumsum(pmf)


def _lgamma_array(x: np.ndarray) -> np.ndarray:
    return np.fromiter((math.lgamma(v) for v in x), dtype=np.float64, count=len(x))


def _from_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    index = np.searchsorted(cdf / cdf[-1], u, side="left")
    return np.minimum(index, len(cdf) - 1).astype(np.int64)


def _draw_binomial(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    return _from_cdf(_binomial_cdf(int(p["n"]), float(p["p"])), d.u())


def _check_poisson(p: dict) -> list[str]:
    problems = _number(p, "mean")
    if not problems and not 0 <= p["mean"] <= 1e7:
        problems.append(f"mean={p['mean']!r} is out of range: it must be between 0 and 10000000")
    return problems


@lru_cache(maxsize=64)
def _poisson_cdf(mean: float) -> np.ndarray:
    top = int(mean + 12 * math.sqrt(mean) + 30)
    k = np.arange(top + 1, dtype=np.float64)
    if mean == 0:
        return np.ones(1)
    log_pmf = k * math.log(mean) - mean - _lgamma_array(k + 1)
    return np.cumsum(np.exp(log_pmf))


def _draw_poisson(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    return _from_cdf(_poisson_cdf(float(p["mean"])), d.u())


# --- scipy --------------------------------------------------------------------------------------

def frozen_scipy(dist: Any, params: Any):
    """``scipy.stats.<dist>(**params)``, or a ValueError saying what is wrong."""
    try:
        import scipy.stats
    except ImportError:
        raise ValueError("the scipy sampler needs scipy: pip install 'recipe[scipy]'") from None
    family = getattr(scipy.stats, str(dist), None) if isinstance(dist, str) and not dist.startswith("_") else None
    if not isinstance(family, (scipy.stats.rv_continuous, scipy.stats.rv_discrete)):
        raise ValueError(f"dist={dist!r} is not a scipy.stats distribution (for example norm, gamma, lognorm, zipf)")
    if not isinstance(params, dict):
        raise ValueError(f"params must be a mapping of {dist}'s parameters, not {params!r:.60}")
    try:
        frozen = family(**params)
        middle = frozen.ppf(0.5)
    except Exception as exc:  # noqa: BLE001 - scipy's own words about the parameters
        raise ValueError(f"scipy.stats.{dist}({', '.join(f'{k}={v!r}' for k, v in params.items())}): {exc}") from None
    if not np.isfinite(middle) and not np.isinf(middle):
        raise ValueError(f"scipy.stats.{dist} refuses params {params!r}: out of the distribution's domain")
    return frozen


def _check_scipy(p: dict) -> list[str]:
    try:
        frozen_scipy(p.get("dist"), p.get("params") or {})
    except ValueError as exc:
        return [str(exc)]
    return []


@lru_cache(maxsize=64)
def _frozen(dist: str, params: tuple):
    return frozen_scipy(dist, dict(params))


def _draw_scipy(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    return np.asarray(_frozen(p["dist"], tuple(sorted((p.get("params") or {}).items()))).ppf(d.u()))


# --- datetime, timedelta ---------------------------------------------------------------------

def _datetime(value: Any, unit: str) -> np.datetime64:
    # numpy's stubs accept only a literal unit; UNITS' values are all valid units
    return np.datetime64(str(value), UNITS[unit])  # type: ignore[call-overload]


def _check_unit(p: dict) -> list[str]:
    return [] if p.get("unit", "D") in UNITS else [f"unit must be one of {', '.join(UNITS)}, not {p.get('unit')!r}"]


def _check_datetime(p: dict) -> list[str]:
    problems = _check_unit(p)
    if problems:
        return problems
    try:
        start, end = _datetime(p.get("start"), p.get("unit", "D")), _datetime(p.get("end"), p.get("unit", "D"))
    except ValueError as exc:
        return [f"start and end must be ISO dates or datetimes (2024-01-31, 2024-01-31T12:00): {exc}"]
    if start > end:
        return [f"start={p['start']!r} is after end={p['end']!r}"]
    return []


def _draw_datetime(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    unit = p.get("unit", "D")
    start, end = _datetime(p["start"], unit), _datetime(p["end"], unit)
    step = _SECONDS[unit] // (86400 if UNITS[unit] == "D" else 1)
    span = int((end - start).astype(np.int64)) // step
    offsets = np.floor(d.u() * (span + 1)).astype(np.int64) * step
    return start + offsets.astype(f"timedelta64[{UNITS[unit]}]")


def _check_timedelta(p: dict) -> list[str]:
    problems = _check_unit(p) + _number(p, "dt_min", integer=True) + _number(p, "dt_max", integer=True)
    if not problems and p["dt_min"] > p["dt_max"]:
        problems.append(f"dt_min={p['dt_min']!r} > dt_max={p['dt_max']!r}: dt_min must not exceed dt_max")
    if not isinstance(p.get("reference"), str):
        problems.append(f"reference must name an earlier datetime column, not {p.get('reference')!r}")
    return problems


def _draw_timedelta(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    unit = p.get("unit", "D")
    reference = ctx.raw[p["reference"]]
    kept = "D" if UNITS[unit] == "D" and np.datetime_data(reference.dtype)[0] == "D" else "s"
    step = _SECONDS[unit] // (86400 if kept == "D" else 1)
    delta = np.floor(d.u() * (p["dt_max"] - p["dt_min"] + 1)).astype(np.int64) + p["dt_min"]
    return reference.astype(f"datetime64[{kept}]") + (delta * step).astype(f"timedelta64[{kept}]")


# --- uuid ---------------------------------------------------------------------------------------

def _check_uuid(p: dict) -> list[str]:
    problems = [] if isinstance(p.get("prefix", ""), str) else [f"prefix must be text, not {p['prefix']!r}"]
    return problems + [f"{name} must be true or false, not {p[name]!r}"
                       for name in ("short", "uppercase") if not isinstance(p.get(name, False), bool)]


def _draw_uuid(p: dict, d: Draws, ctx: Context) -> np.ndarray:
    high, low = d.bits(0), d.bits(1)
    # a version-4, RFC 4122 variant UUID from 128 keyed bits
    high = (high & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x4000)
    low = (low & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000)
    prefix, short = p.get("prefix", ""), p.get("short", False)
    n = len(high)
    # the hex digits of all records at once (one bytes.hex()), cut into columns with numpy
    digits = np.frombuffer(np.stack([high, low], axis=1).astype(">u8").tobytes().hex().encode("ascii"),
                           dtype="S1").reshape(n, 32)
    if short:
        parts = [digits[:, :8]]
    else:
        dash = np.full((n, 1), b"-", dtype="S1")
        parts = [digits[:, :8], dash, digits[:, 8:12], dash, digits[:, 12:16], dash, digits[:, 16:20], dash,
                 digits[:, 20:]]
    joined = np.ascontiguousarray(np.hstack(parts))
    width = joined.shape[1]
    texts = joined.view(f"S{width}").ravel().tolist() if n else []
    upper = p.get("uppercase", False)
    texts = [prefix + (t.decode("ascii").upper() if upper else t.decode("ascii")) for t in texts]
    return _objects(texts)


# --- the table ----------------------------------------------------------------------------------

def _person_kind() -> Kind:
    from recipe.stages.samplers import persons

    return Kind((), {"locale": "en_US", "age_range": [18, 85], "sex": None}, persons.check, persons.draw)


def _dataset_kind() -> Kind:
    from recipe.stages.samplers import datasets

    return Kind(("path",), {"field": None, "replace": True}, datasets.check, datasets.draw)


KINDS: dict[str, Kind | Callable[[], Kind]] = {
    "category": Kind(("values",), {"weights": None}, _check_category, _draw_category),
    "subcategory": Kind(("parent", "values"), {}, _check_subcategory, _draw_subcategory, refers=("parent",)),
    "uniform": Kind(("low", "high"), {}, _check_uniform, _draw_uniform),
    "gaussian": Kind(("mean", "stddev"), {}, _check_gaussian, _draw_gaussian),
    "bernoulli": Kind(("p",), {}, _probability, _draw_bernoulli),
    "binomial": Kind(("n", "p"), {}, _check_binomial, _draw_binomial),
    "poisson": Kind(("mean",), {}, _check_poisson, _draw_poisson),
    "scipy": Kind(("dist",), {"params": {}}, _check_scipy, _draw_scipy),
    "datetime": Kind(("start", "end"), {"unit": "D"}, _check_datetime, _draw_datetime),
    "timedelta": Kind(("dt_min", "dt_max", "reference"), {"unit": "D"}, _check_timedelta, _draw_timedelta,
                      refers=("reference",)),
    "uuid": Kind((), {"prefix": "", "short": False, "uppercase": False}, _check_uuid, _draw_uuid),
    "person": _person_kind,
    "dataset": _dataset_kind,
}


def kind(name: Any) -> Kind | None:
    found = KINDS.get(name) if isinstance(name, str) else None
    return found() if callable(found) and not isinstance(found, Kind) else found
