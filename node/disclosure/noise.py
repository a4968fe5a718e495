"""Optional differentially private noise on released counts, with a privacy budget per requester.

``[policy.noise]`` in node.toml (docs/node-policy.md)::

    mechanism = "laplace"          # "none" (default) | "laplace" | "gaussian"
    epsilon_per_query = 0.5        # epsilon charged for each released result
    delta = 1e-6                   # gaussian only
    budget_per_requester = 5.0     # total epsilon a requester may spend at this site
    clip = { age = [0, 100], image_feature = [0, 5000] }   # per variable name or kind, for summary sums

Mechanisms (Dwork & Roth, *The Algorithmic Foundations of Differential Privacy*, 2014):
Laplace with scale ``sensitivity / epsilon`` (Thm 3.6, pure epsilon-DP); Gaussian with
``sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` (Thm A.1, (epsilon, delta)-DP, valid for
``epsilon < 1``, hence that limit).  Neighbouring cohorts differ by one person.

What one query costs and how it is split:
  * ``count``: one number, sensitivity 1.
  * ``crosstab``, ``histogram``: each person falls in exactly one cell, so the cells are disjoint and
    every cell gets independent noise at the full epsilon (parallel composition, Thm 3.16 ff.).
  * ``quantile_round``: ``n`` and each ``n_le`` (one person moves all of them): epsilon split evenly
    over the 1 + T numbers (sequential composition).
  * ``summary``: per variable ``n`` (sensitivity 1), ``sum`` (``max |bound|``) and ``sum_sq``
    (``max bound^2``) of the values *clipped* to the configured bounds; epsilon (and delta) split evenly
    over the 3 x variables numbers.  Without bounds for a variable a noisy sum has unbounded
    sensitivity, so such a summary is refused ``NOT_ALLOWED``.
  * model rounds (``crossprod``, ``km_round``, ``cox_round``, ``glm_round``) and any other analysis:
    refused ``NOT_ALLOWED`` while noise is on — the coordinator pools exact sufficient statistics and
    Newton iterations, which independent per-round noise would silently bias (and each round would
    spend budget).

Post-processing (cannot weaken the guarantee, Prop 2.1): noisy counts are rounded to integers and
clipped at 0 (slightly biasing tiny counts upwards), ``n_le`` are clipped to ``[0, n]`` and made
non-decreasing, ``sum_sq`` is clipped at 0.  Small-cell and secondary suppression run on the *true*
counts before noise (suppressed cells stay ``null``).  Budget: basic sequential composition — the
epsilons (and deltas) of every released result add up; a request that would pass
``budget_per_requester``, or ``budget_site`` (all requesters together), is refused ``BUDGET`` before it
runs.  A refusal whose reason depends on the data (:data:`CHARGED_REFUSALS`) is charged like a
release: otherwise refusals would be free yes/no answers outside the budget.  Which crosstab
categories are listed no longer depends on the data (node/disclosure/shapes.py); the refusal itself
still carries information, which the charge bounds only in number, not per answer: the noise is a
layer on top of suppression, not a replacement for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from cdm import spec as S
from node import state
from node.config import ConfigError
from node.disclosure.policy import Refusal

MECHANISMS = ("none", "laplace", "gaussian")
NOISY_ANALYSES = ("count", "crosstab", "histogram", "quantile_round", "summary")
KEYS = {"mechanism", "epsilon_per_query", "delta", "budget_per_requester", "budget_site", "clip"}
SITE = "*site*"  # the privacy_budget row that sums every requester's spending (budget_site)
#: Refusals whose reason depends on the data (how many persons, what was released before): each is
#: charged like a release, or a researcher could ask for free until the pattern of refusals tells
#: what the noise hides (issue 16, family 2).
CHARGED_REFUSALS = ("MIN_CELL", "MIN_ROWS", "DIFFERENCING", "AUDIT_FULL")
B = state.privacy_budget


def _positive(raw: dict, name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"[policy.noise] {name} must be a positive number, not {value!r}")
    return float(value)


def _bounds(raw) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, dict):
        raise ConfigError("[policy.noise] clip must be a table {variable name or kind = [lo, hi]}")
    out = {}
    for name, pair in raw.items():
        if (not isinstance(pair, list) or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                                 or not math.isfinite(v) for v in pair)
                or not pair[0] < pair[1]):
            raise ConfigError(f"[policy.noise] clip.{name} must be [lo, hi] with lo < hi, not {pair!r}")
        out[name] = (float(pair[0]), float(pair[1]))
    return out


@dataclass(frozen=True)
class NoiseSettings:
    mechanism: str = "none"
    epsilon_per_query: float = 1.0
    delta: float = 1e-6
    budget_per_requester: float = 10.0
    clip: dict = field(default_factory=dict)
    budget_site: float = math.inf  # every requester together (colluding researchers share one site)

    @classmethod
    def from_config(cls, config) -> "NoiseSettings":
        raw = (config.section("policy") if config is not None else {}).get("noise", {})
        if not isinstance(raw, dict):
            raise ConfigError("[policy.noise] must be a table")
        unknown = sorted(set(raw) - KEYS)
        if unknown:  # a misspelt key must not silently fall back to a default
            raise ConfigError(f"[policy.noise] unknown key(s) {unknown}; known: {', '.join(sorted(KEYS))}")
        mechanism = raw.get("mechanism", "none")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"[policy.noise] mechanism must be one of {', '.join(MECHANISMS)}, not {mechanism!r}")
        settings = cls(mechanism, _positive(raw, "epsilon_per_query", 1.0), _positive(raw, "delta", 1e-6),
                       _positive(raw, "budget_per_requester", 10.0), _bounds(raw.get("clip", {})),
                       _positive(raw, "budget_site", 1.0) if "budget_site" in raw else math.inf)
        if mechanism == "gaussian" and not (settings.epsilon_per_query < 1 and settings.delta < 1):
            raise ConfigError("[policy.noise] the Gaussian mechanism needs epsilon_per_query < 1 and delta < 1 "
                              "(Dwork & Roth 2014, Thm A.1)")
        return settings

    @property
    def on(self) -> bool:
        return self.mechanism != "none"

    @property
    def delta_per_query(self) -> float:
        return self.delta if self.mechanism == "gaussian" else 0.0


def noise_scale(mechanism: str, sensitivity: float, epsilon: float, delta: float) -> float:
    """Laplace scale b, or Gaussian standard deviation sigma, for one released number."""
    if mechanism == "laplace":
        return sensitivity / epsilon
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def new_rng() -> np.random.Generator:
    """A generator seeded from the OS entropy pool: never a fixed seed, never reused across requests."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


class _Noiser:
    def __init__(self, settings: NoiseSettings, rng: np.random.Generator, share: int = 1):
        self.settings, self.rng = settings, rng
        self.epsilon = settings.epsilon_per_query / share
        self.delta = settings.delta_per_query / share

    def number(self, value: float, sensitivity: float = 1.0) -> float:
        scale = noise_scale(self.settings.mechanism, sensitivity, self.epsilon, self.delta)
        if self.settings.mechanism == "laplace":
            return float(value + self.rng.laplace(0.0, scale))
        return float(value + self.rng.normal(0.0, scale))

    def count(self, value: int | None) -> int | None:
        return None if value is None else max(0, int(math.floor(self.number(value) + 0.5)))


def clip_bounds(spec: S.Spec, name: str, settings: NoiseSettings) -> tuple[float, float] | None:
    """Bounds for variable ``name``: configured for its name, else for its kind."""
    return settings.clip.get(name) or settings.clip.get(spec.variables[name].kind)


def precheck(spec: S.Spec, settings: NoiseSettings) -> None:
    """Refuse, before anything runs, what cannot be released with noise."""
    if not settings.on:
        return
    kind = spec.analysis.type
    if kind not in NOISY_ANALYSES:
        raise Refusal("NOT_ALLOWED", f"{kind} is not available while this site adds noise to results: exact "
                                     "pooled models and differentially private noise do not mix here")
    if kind == "summary":
        missing = [n for n in spec.analysis.variables if clip_bounds(spec, n, settings) is None]
        if missing:
            raise Refusal("NOT_ALLOWED", f"a noisy summary needs clipping bounds at this site; none for {missing} "
                                         "(the site administrator sets [policy.noise] clip)")


def privatize(spec: S.Spec, result: dict, values: dict, settings: NoiseSettings,
              rng: np.random.Generator | None = None) -> dict:
    """The released form of ``result`` (already suppressed on true counts) with noise added."""
    if not settings.on:
        return result
    rng = rng if rng is not None else new_rng()
    a = spec.analysis
    if a.type == "count":
        return {**result, "n": _Noiser(settings, rng).count(result["n"])}
    if a.type == "crosstab":
        noiser = _Noiser(settings, rng)
        return {**result, "cells": [{**c, "n": noiser.count(c["n"])} for c in result["cells"]]}
    if a.type == "histogram":
        noiser = _Noiser(settings, rng)
        return {**result, "counts": [noiser.count(c) for c in result["counts"]],
                "below": noiser.count(result["below"]), "above": noiser.count(result["above"])}
    if a.type == "quantile_round":
        noiser = _Noiser(settings, rng, share=1 + len(a.thresholds))
        n = noiser.count(result["n"])
        n_le, floor = [], 0
        for k in result["n_le"]:
            k = None if k is None else max(floor, min(n, noiser.count(k)))
            floor = k if k is not None else floor
            n_le.append(k)
        # a hidden count's tail bounds are written against the noisy n (the true n must not show)
        bounds = [b if b is None or b[0] == 0 else [max(0, n - (b[1] - b[0])), n] for b in result.get("bounds") or []]
        return {**result, "n": n, "n_le": n_le, **({"bounds": bounds} if "bounds" in result else {})}
    if a.type == "summary":
        noiser = _Noiser(settings, rng, share=3 * len(a.variables))
        out = {}
        for name, cell in result["variables"].items():
            if cell["n"] is None:
                out[name] = cell
                continue
            lo, hi = clip_bounds(spec, name, settings)
            x = np.clip(np.array([v for v in values[name] if v is not None], dtype=float), lo, hi)
            out[name] = {"n": noiser.count(len(x)),
                         "sum": noiser.number(float(x.sum()), max(abs(lo), abs(hi))),
                         "sum_sq": max(0.0, noiser.number(float((x * x).sum()), max(lo * lo, hi * hi)))}
        return {**result, "variables": out}
    raise Refusal("NOT_ALLOWED", f"{a.type} cannot be released with noise")  # precheck refuses it earlier


# -- budget -----------------------------------------------------------------------------------------


def spent(engine, requester: str) -> tuple[float, float, int]:
    """(epsilon, delta, released queries) charged to ``requester`` so far."""
    with engine.connect() as conn:
        row = conn.execute(select(B.c.epsilon_spent, B.c.delta_spent, B.c.queries)
                           .where(B.c.requester == requester)).first()
    return (row[0], row[1], row[2]) if row else (0.0, 0.0, 0)


def _over(epsilon_spent: float, settings: NoiseSettings) -> bool:
    return epsilon_spent + settings.epsilon_per_query > settings.budget_per_requester * (1 + 1e-9)


def _budget_refusal(requester: str, epsilon_spent: float, settings: NoiseSettings) -> Refusal:
    return Refusal("BUDGET", f"privacy budget exhausted for {requester}: spent epsilon {epsilon_spent:g} of "
                             f"{settings.budget_per_requester:g}, this query costs {settings.epsilon_per_query:g}")


def check_budget(engine, requester: str, settings: NoiseSettings) -> None:
    """Refuse ``BUDGET`` before running a query the requester, or the site as a whole, can no longer
    afford."""
    if settings.on:
        epsilon_spent = spent(engine, requester)[0]
        if _over(epsilon_spent, settings):
            raise _budget_refusal(requester, epsilon_spent, settings)
        site_spent = spent(engine, SITE)[0]
        if site_spent + settings.epsilon_per_query > settings.budget_site * (1 + 1e-9):
            raise Refusal("BUDGET", f"this site's privacy budget is exhausted: all researchers together spent "
                                    f"epsilon {site_spent:g} of {settings.budget_site:g}")


def charge_site(engine, settings: NoiseSettings) -> None:
    """Add one query to the site-wide total (its limit is checked before the query runs)."""
    eps, delta, now = settings.epsilon_per_query, settings.delta_per_query, state.utcnow()
    for _attempt in range(3):
        with engine.begin() as conn:
            if conn.execute(update(B).where(B.c.requester == SITE).values(
                    epsilon_spent=B.c.epsilon_spent + eps, delta_spent=B.c.delta_spent + delta,
                    queries=B.c.queries + 1, updated_at=now)).rowcount:
                return
        try:
            with engine.begin() as conn:
                conn.execute(insert(B).values(requester=SITE, epsilon_spent=eps, delta_spent=delta, queries=1,
                                              updated_at=now))
            return
        except IntegrityError:  # a parallel first query created the row
            continue


def charge(engine, requester: str, settings: NoiseSettings) -> dict:
    """Charge one released query.  The budget test is part of the UPDATE's WHERE clause, so it is
    atomic on every database: parallel requests that all passed :func:`check_budget` cannot overspend."""
    eps, delta, now = settings.epsilon_per_query, settings.delta_per_query, state.utcnow()
    affordable = settings.budget_per_requester * (1 + 1e-9) - eps  # spent so far must be at most this
    for _attempt in range(3):
        with engine.begin() as conn:
            charged = conn.execute(update(B).where(B.c.requester == requester, B.c.epsilon_spent <= affordable).values(
                epsilon_spent=B.c.epsilon_spent + eps, delta_spent=B.c.delta_spent + delta,
                queries=B.c.queries + 1, updated_at=now)).rowcount
        if charged:
            break
        epsilon_spent, _, queries = spent(engine, requester)
        if queries or _over(0.0, settings):  # the row exists (or one query alone is too dear): over budget
            raise _budget_refusal(requester, epsilon_spent, settings)
        try:
            with engine.begin() as conn:
                conn.execute(insert(B).values(requester=requester, epsilon_spent=eps, delta_spent=delta,
                                              queries=1, updated_at=now))
            break
        except IntegrityError:  # a parallel first request created the row: charge on top of it
            continue
    else:
        raise RuntimeError(f"could not charge the privacy budget of {requester}")
    charge_site(engine, settings)
    epsilon_spent, delta_spent, _ = spent(engine, requester)
    return {"mechanism": settings.mechanism, "epsilon": eps, "delta": delta, "epsilon_spent": epsilon_spent,
            "delta_spent": delta_spent, "budget_per_requester": settings.budget_per_requester}
