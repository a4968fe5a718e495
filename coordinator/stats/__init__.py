"""Exact federated statistics: multi-round algorithms the coordinator runs over the sites.

``run_analysis(analysis, ask)`` is what :mod:`coordinator.service` calls (in a worker thread) for any
analysis type in :data:`ANALYSES`; ``ask(node_analysis) -> list[dict]`` sends one round to every site
and returns the ``ok`` sites' results, each tagged with ``"_site"``.  Each algorithm is one module
whose test oracle is the same computation on the pooled data (lifelines, statsmodels, numpy, scipy):

=============  =====================================================  =========================
type           module                                                 rounds
=============  =====================================================  =========================
km             :mod:`.km` (Kaplan-Meier, log-rank)                    1
cox            :mod:`.cox` (stratified / pooled baseline, tv)         Newton iterations + 1
glm            :mod:`.glm` (logistic Newton, linear normal eqs.)      iterations + 1 / 1
quantile       :mod:`.quantiles` (bisection on counts)                4-6 (recorded data) to 14
correlation    :mod:`.moments` (crossprod)                            1
concordance    :mod:`.concordance` (agreement table, kappa, bands)    1
habitat        :mod:`.habitat` (weighted logistic via habitat_round)  iterations + 1
=============  =====================================================  =========================

Chi-square for pooled crosstabs is :mod:`.chisq` (called by :mod:`coordinator.aggregate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import TypeAdapter, ValidationError

from cdm import spec as cdm_spec
from coordinator.stats.session import Session, StatsError

ANALYSES = ("km", "cox", "glm", "quantile", "correlation", "concordance", "habitat")

__all__ = ["ANALYSES", "StatsError", "run_analysis"]


def _models() -> dict:
    return {"km": cdm_spec.KMAnalysis, "cox": cdm_spec.CoxAnalysis, "glm": cdm_spec.GLMAnalysis,
            "quantile": cdm_spec.QuantileAnalysis, "correlation": cdm_spec.CorrelationAnalysis,
            "concordance": cdm_spec.ConcordanceRound, "habitat": cdm_spec.HabitatAnalysis}


def _runner(kind: str) -> Callable:
    from coordinator.stats import concordance, cox, glm, habitat, km, moments, quantiles

    return {"km": km.run, "cox": cox.run, "glm": glm.run, "quantile": quantiles.run, "correlation": moments.run,
            "concordance": concordance.run, "habitat": habitat.run}[kind]


def run_analysis(analysis: dict, ask: Callable[[dict], list[dict]]) -> dict:
    """Run one researcher-level analysis over the sites behind ``ask``; the pooled result as a dict."""
    kind = analysis.get("type") if isinstance(analysis, dict) else None
    if kind not in ANALYSES:
        raise StatsError(f"unknown multi-round analysis {kind!r}; known: {', '.join(ANALYSES)}")
    try:
        parsed = TypeAdapter(_models()[kind]).validate_python(analysis)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise StatsError(f"invalid {kind} analysis: {problems}") from None
    return _json_safe(_runner(kind)(parsed, Session(ask)))


def _json_safe(value):
    """Results are stored and sent as strict JSON: a non-finite float (an undefined statistic) is null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
