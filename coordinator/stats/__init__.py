"""Exact federated statistics: the multi-round analyses the coordinator drives over the sites.

``run_analysis(analysis, ask)`` is what :mod:`coordinator.service` calls (in a worker thread) for any
analysis type in :data:`ANALYSES`; ``ask(node_analysis) -> list[dict]`` sends one round to every site
and returns the ``ok`` sites' results, each tagged with ``"_site"``.  Each algorithm is the central
half of its kind in :mod:`cdm.analyses` (next to the site half it drives), and its test oracle is
the same computation on the pooled data (lifelines, statsmodels, numpy, scipy).  How results read
as text: :mod:`.text`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import TypeAdapter, ValidationError

from cdm.analyses import KINDS, MULTI_ROUND
from cdm.analyses.session import Session, StatsError

ANALYSES = MULTI_ROUND

__all__ = ["ANALYSES", "StatsError", "run_analysis"]


def run_analysis(analysis: dict, ask: Callable[[dict], list[dict]]) -> dict:
    """Run one researcher-level analysis over the sites behind ``ask``; the pooled result as a dict."""
    kind = analysis.get("type") if isinstance(analysis, dict) else None
    if kind not in ANALYSES:
        raise StatsError(f"unknown multi-round analysis {kind!r}; known: {', '.join(ANALYSES)}")
    try:
        parsed = TypeAdapter(KINDS[kind].model).validate_python(analysis)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise StatsError(f"invalid {kind} analysis: {problems}") from None
    return _json_safe(KINDS[kind].run(parsed, Session(ask)))


def _json_safe(value):
    """Results are stored and sent as strict JSON: a non-finite float (an undefined statistic) is null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
