"""``summary``: n, sum and sum of squares of numeric variables.

Site: per variable over the persons who have a value; a variable with a small n is released as
nulls.  Central: exact sums over the sites, then mean and sample (n - 1) variance
(:func:`moments`); a site's suppressed variable leaves the pooled row incomplete."""

from __future__ import annotations

import math

import numpy as np

from cdm import spec as S
from cdm.analyses.kind import Kind, numeric
from cdm.analyses.tables import AggregationError


def site(spec: S.Spec, data, policy) -> dict:
    out, suppressed = {}, []
    for name in spec.analysis.variables:
        x = np.array([v for v in data.values[name] if v is not None], dtype=float)
        if policy.small(len(x)):
            out[name] = {"n": None, "sum": None, "sum_sq": None}
            suppressed.append(name)
        else:
            out[name] = {"n": int(len(x)), "sum": float(x.sum()), "sum_sq": float((x * x).sum())}
    return {"variables": out, "suppressed": suppressed}


def person_cells(a, ids, values, result) -> list:
    return [(numeric(values[name], ids)[1], cell["n"]) for name, cell in result["variables"].items()]


def moments(n, total, total_sq) -> dict:
    """mean and (sample, n-1) variance from n, sum and sum of squares."""
    out = {"n": n, "sum": total, "sum_sq": total_sq, "mean": None, "variance": None, "sd": None}
    if n is None or total is None:
        return {**out, "suppressed": True}
    if n > 0:
        out["mean"] = total / n
    if n > 1 and total_sq is not None:
        variance = max((total_sq - total * total / n) / (n - 1), 0.0)
        out["variance"], out["sd"] = variance, math.sqrt(variance)
    return out


def _variables(result: dict) -> dict:
    variables = result.get("variables", result)
    if not isinstance(variables, dict):
        raise AggregationError("summary result has no per-variable moments")
    return {k: v for k, v in variables.items() if isinstance(v, dict)}


def pool(analysis: dict, results: dict[str, dict]) -> dict:
    per_var: dict[str, dict[str, dict]] = {}
    for site_name, result in results.items():
        for name, m in _variables(result).items():
            per_var.setdefault(name, {})[site_name] = m
    rows = []
    for name in sorted(per_var):
        sites = per_var[name]
        usable = {s: m for s, m in sites.items() if m.get("n") is not None and m.get("sum") is not None}
        suppressed_at = sorted(set(sites) - set(usable))
        n = sum(int(m["n"]) for m in usable.values())
        total = math.fsum(float(m["sum"]) for m in usable.values())
        total_sq = math.fsum(float(m.get("sum_sq") or 0.0) for m in usable.values())
        pooled = moments(n, total, total_sq) if usable else moments(None, None, None)
        pooled.update(complete=not suppressed_at, suppressed_at=suppressed_at)
        rows.append({"key": [name], "pooled": pooled,
                     "per_site": {s: moments(m.get("n"), m.get("sum"), m.get("sum_sq")) for s, m in sorted(sites.items())}})
    return {"type": "summary", "columns": ["variable"], "sites": sorted(results), "rows": rows}


KIND = Kind(model=S.SummaryAnalysis, site=site, pool=pool, person_cells=person_cells)
