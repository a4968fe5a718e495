"""Exact pooling of one-round results: count, crosstab, summary, histogram.

Input: ``{site: result}`` for the sites that answered ``ok`` (results as in docs/analysis-rounds.md).
Output: a table-shaped record, the same for every analysis, that the API returns and the CLI prints::

    {"type": "crosstab", "columns": ["subtype"], "sites": ["site-a", ...],
     "rows": [{"key": ["PFA"], "pooled": {"n": 12, "complete": false, "suppressed_at": ["site-c"]},
               "per_site": {"site-a": {"n": 7}, "site-c": {"n": null, "suppressed": true}}}]}

Sums are exact integers.  A cell a site suppressed is never counted as zero: it stays ``null`` for
that site, and the pooled cell says it is incomplete (a lower bound) and where the suppression was.
"""

from __future__ import annotations

import math

from coordinator.stats.chisq import chi_square


class AggregationError(ValueError):
    """A site's result does not have the shape its analysis type promises."""


def _n(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AggregationError(f"count is not a number: {value!r}")
    return int(value)


def _cell(n) -> dict:
    return {"n": None, "suppressed": True} if n is None else {"n": n}


def _pool_counts(per_site: dict[str, int | None]) -> dict:
    known = [n for n in per_site.values() if n is not None]
    suppressed_at = sorted(s for s, n in per_site.items() if n is None)
    return {"n": sum(known) if known else None, "complete": not suppressed_at, "suppressed_at": suppressed_at}


def pool_count(results: dict[str, dict]) -> dict:
    per_site = {site: _n(r.get("n")) for site, r in results.items()}
    return {"type": "count", "columns": [], "sites": sorted(results),
            "rows": [{"key": ["persons"], "pooled": _pool_counts(per_site),
                      "per_site": {s: _cell(n) for s, n in per_site.items()}}]}


def pool_crosstab(results: dict[str, dict], by: list[str] | None = None) -> dict:
    table: dict[tuple, dict[str, int | None]] = {}
    for site, result in results.items():
        for cell in result.get("cells", []):
            key = tuple("" if k is None else k for k in cell.get("key", []))
            table.setdefault(key, {})[site] = _n(cell.get("n"))
    rows = []
    for key in sorted(table, key=lambda k: tuple(str(x) for x in k)):
        per_site = table[key]
        rows.append({"key": list(key), "pooled": _pool_counts(per_site),
                     "per_site": {s: _cell(n) for s, n in sorted(per_site.items())}})
    return {"type": "crosstab", "columns": list(by or []), "sites": sorted(results), "rows": rows}


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


def _summary_variables(result: dict) -> dict:
    variables = result.get("variables", result)
    if not isinstance(variables, dict):
        raise AggregationError("summary result has no per-variable moments")
    return {k: v for k, v in variables.items() if isinstance(v, dict)}


def pool_summary(results: dict[str, dict]) -> dict:
    per_var: dict[str, dict[str, dict]] = {}
    for site, result in results.items():
        for name, m in _summary_variables(result).items():
            per_var.setdefault(name, {})[site] = m
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


def pool_histogram(results: dict[str, dict], edges: list[float] | None = None) -> dict:
    labels: list[str] = []
    per_bin: dict[str, dict[str, int | None]] = {}
    for site, result in results.items():
        counts = list(result.get("counts", []))
        names = ([f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(len(edges) - 1)] if edges
                 else [f"bin {i}" for i in range(len(counts))])
        for label, n in [("below", result.get("below"))] + list(zip(names, counts)) + [("above", result.get("above"))]:
            if label not in per_bin:
                labels.append(label)
            per_bin.setdefault(label, {})[site] = _n(n)
    rows = [{"key": [label], "pooled": _pool_counts(per_bin[label]),
             "per_site": {s: _cell(n) for s, n in sorted(per_bin[label].items())}} for label in labels]
    return {"type": "histogram", "columns": ["bin"], "sites": sorted(results), "rows": rows}


def pool(analysis: dict, results: dict[str, dict]) -> dict | None:
    """The pooled table for a one-round analysis, or None when the type is pooled elsewhere."""
    kind = analysis.get("type")
    if kind == "count":
        return pool_count(results)
    if kind == "crosstab":
        table = pool_crosstab(results, analysis.get("by"))
        return {**table, "chi_square": chi_square(table)}  # Pearson test of independence (two-way tables)
    if kind == "summary":
        return pool_summary(results)
    if kind == "histogram":
        return pool_histogram(results, analysis.get("edges"))
    return None


POOLED_TYPES = ("count", "crosstab", "summary", "histogram")
