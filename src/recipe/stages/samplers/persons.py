"""The ``person`` sampler: a persona (name, sex, age, city, state, country, occupation, education,
bio) drawn offline from the word lists Faker ships for a locale.

Calling Faker per person runs at a few thousand persons a second and keeps its own random state.
Instead each locale's lists are read once per process (cities, which Faker composes, are made
once with a fixed Faker seed), and every field is an index drawn from keyed uniforms, vectorised.
"""

from __future__ import annotations

import numbers
from functools import lru_cache
from typing import Any

import numpy as np

from recipe.stages.samplers.keyed import Draws

SEXES = ("Male", "Female")
EDUCATION = ("less than high school", "high school", "some college", "associate degree", "bachelor's degree",
             "master's degree", "doctorate")
_EDUCATION_WEIGHTS = np.cumsum([9, 28, 15, 10, 24, 11, 3]) / 100.0
_CITIES = 2000


class Pools:
    """One locale's lists, each with cumulative weights (Faker weights its names by frequency)."""

    def __init__(self, locale: str) -> None:
        from faker import Faker

        fake = Faker(locale)
        fake.seed_instance(0)
        provider = fake.factories[0].get_providers()
        self.country = _country(fake, locale)
        self.male = _weighted(_attr(provider, "first_names_male", "first_names"))
        self.female = _weighted(_attr(provider, "first_names_female", "first_names"))
        self.last = _weighted(_attr(provider, "last_names"))
        self.jobs = _weighted(_attr(provider, "jobs") or [fake.job() for _ in range(500)])
        self.cities = _weighted([fake.city() for _ in range(_CITIES)])
        states = _attr(provider, "states") or [_region(fake) for _ in range(200)]
        self.states = _weighted([s for s in states if s])


def _attr(providers: list, *names: str) -> Any:
    """The first of ``names`` that one of the locale's providers holds (its word list)."""
    for name in names:
        for provider in providers:
            value = getattr(provider, name, None)
            if value and not callable(value):
                return value
    return None


def _region(fake: Any) -> str:
    for method in ("state", "administrative_unit", "region", "province", "county"):
        try:
            return getattr(fake, method)()
        except AttributeError:
            continue
    return ""


def _country(fake: Any, locale: str) -> str:
    try:
        return fake.current_country()
    except Exception:  # noqa: BLE001 - a locale without a country name: its code
        return locale.rpartition("_")[2]


def _weighted(values: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(values, dict):
        names, weights = list(values), [float(w) for w in values.values()]
    else:
        names, weights = list(values), [1.0] * len(values)
    out = np.empty(len(names), dtype=object)
    out[:] = names
    cumulative = np.cumsum(weights)
    return out, cumulative / cumulative[-1]


def _take(pool: tuple[np.ndarray, np.ndarray], u: np.ndarray) -> np.ndarray:
    values, cumulative = pool
    return values[np.minimum(np.searchsorted(cumulative, u, side="right"), len(values) - 1)]


@lru_cache(maxsize=16)
def pools(locale: str) -> Pools:
    try:
        return Pools(locale)
    except ImportError:
        raise ValueError("the person sampler needs Faker: pip install faker") from None
    except AttributeError:
        raise ValueError(f"locale={locale!r} is not a locale Faker knows (for example en_US, en_GB, de_DE, fr_FR)")


def check(p: dict) -> list[str]:
    problems = []
    span = p.get("age_range", [18, 85])
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in span)):
        problems.append(f"age_range must be [lowest, highest] ages, not {span!r}")
    elif not 0 <= span[0] <= span[1] <= 120:
        problems.append(f"age_range={list(span)!r} is out of range: 0 <= lowest <= highest <= 120")
    if p.get("sex") is not None and p["sex"] not in SEXES:
        problems.append(f"sex must be {' or '.join(SEXES)} (or null for either), not {p['sex']!r}")
    if not isinstance(p.get("locale", "en_US"), str):
        problems.append(f"locale must be text such as en_US, not {p['locale']!r}")
    else:
        try:
            pools(p.get("locale", "en_US"))
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def draw(p: dict, d: Draws, ctx: Any) -> np.ndarray:
    pool = pools(p.get("locale", "en_US"))
    n = len(d)
    low, high = p.get("age_range", [18, 85])
    if p.get("sex") is None:
        female = d.u(0) >= 0.5
    else:
        female = np.full(n, p["sex"] == "Female")
    first = np.where(female, _take(pool.female, d.u(1)), _take(pool.male, d.u(1)))
    last = _take(pool.last, d.u(2))
    ages = (np.floor(d.u(3) * (high - low + 1)) + low).astype(np.int64).tolist()
    cities, states = _take(pool.cities, d.u(4)), _take(pool.states, d.u(5))
    jobs = _take(pool.jobs, d.u(6))
    education = np.asarray(EDUCATION, dtype=object)[np.minimum(np.searchsorted(_EDUCATION_WEIGHTS, d.u(7), side="right"),
                                                               len(EDUCATION) - 1)]
    country = pool.country
    out = np.empty(n, dtype=object)
    out[:] = [{"name": f"{f} {sur}", "first_name": f, "last_name": sur, "sex": "Female" if w else "Male", "age": a,
               "city": c, "state": s, "country": country, "occupation": j, "education": e,
               "bio": f"{f} {sur}, {a}, {j.lower()} from {c}, {s} ({e})."}
              for f, sur, w, a, c, s, j, e in zip(first.tolist(), last.tolist(), female.tolist(), ages,
                                                cities.tolist(), states.tolist(), jobs.tolist(), education.tolist())]
    return out
