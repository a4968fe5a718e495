"""``crosstab``: persons per combination of categories (numeric variables cut into ``bins``).

Site: one count per combination of the categories the spec defines (the policy's ``categories``:
present or not, so the listed keys never depend on the data), small ones -- zero included --
suppressed with their secondary cells (the policy's ``suppress``).  Central: exact sums per cell (:mod:`cdm.analyses.tables`) and, for a
two-way table, Pearson's chi-square test of independence (:func:`chi_square`): ``X^2 = sum (O -
E)^2 / E`` with ``E = row total x column total / n`` and ``(r - 1)(c - 1)`` degrees of freedom,
without continuity correction (scipy ``chi2_contingency(correction=False)``).  A cell no site
reported is a zero count.  When any pooled cell is incomplete (a site suppressed it) the test is not
computed: a lower bound is not a count -- except a category whose cells are hidden everywhere
(below/above bins nobody is in), which is left out and named in the note.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from cdm import spec as S
from cdm.analyses import tables
from cdm.analyses.kind import Kind


def bin_label(value, edges):
    i = int(np.searchsorted(edges, value, side="right")) - 1
    return f"[{edges[i]}, {edges[i + 1]})" if 0 <= i < len(edges) - 1 else ("below" if i < 0 else "above")


def cell_codes(values: dict, a, domains: list[list]) -> tuple[list[tuple], np.ndarray]:
    """(every key of the crosstab, from ``domains`` -- each variable's categories as the spec
    defines them, never as the data has them --, each person's key index or -1 when a variable is
    missing).  Binned variables are keyed by :func:`bin_label` of each distinct value."""
    codes = None
    for n, names in zip(a.by, domains):
        index = {name: i for i, name in enumerate(names)}
        edges = a.bins.get(n)
        lookup = {v: index.get(bin_label(v, edges) if edges else v, -1) for v in dict.fromkeys(values[n]) if v is not None}
        lookup[None] = -1
        c = np.fromiter(map(lookup.__getitem__, values[n]), dtype=np.int64, count=len(values[n]))
        codes = c if codes is None else np.where((codes < 0) | (c < 0), -1, codes * len(names) + c)
    return list(product(*domains)), (codes if codes is not None else np.zeros(0, dtype=np.int64))


def site(spec: S.Spec, data, policy) -> dict:
    a = spec.analysis
    distinct, codes = cell_codes(data.values, a, policy.categories(spec, a, data.site))
    n_per = np.bincount(codes[codes >= 0], minlength=len(distinct))
    counts = {key: int(n) for key, n in zip(distinct, n_per.tolist())}
    keys = sorted(counts, key=lambda k: tuple(map(str, k)))
    hidden = policy.suppress(keys, [counts[k] for k in keys])
    return {"cells": [{"key": list(k), "n": None if i in hidden else counts[k]} for i, k in enumerate(keys)],
            "suppressed": [list(keys[i]) for i in sorted(hidden)]}


def person_cells(a, ids, values, result) -> list:
    listed = [tuple(c["key"]) for c in result["cells"]]  # every category combination: the domains again
    keys, codes = cell_codes(values, a, [list(dict.fromkeys(k[d] for k in listed)) for d in range(len(a.by))])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
    members = {key: ids[order[bounds[j]:bounds[j + 1]]] for j, key in enumerate(keys)}
    return [(members.get(tuple(c["key"]), []), c["n"]) for c in result["cells"]]


def pool_table(results: dict[str, dict], by: list[str] | None = None) -> dict:
    table: dict[tuple, dict[str, int | None]] = {}
    for site_name, result in results.items():
        for c in result.get("cells", []):
            key = tuple("" if k is None else k for k in c.get("key", []))
            table.setdefault(key, {})[site_name] = tables.count(c.get("n"))
    keys = sorted(table, key=lambda k: tuple(str(x) for x in k))
    return {"type": "crosstab", "columns": list(by or []), "sites": sorted(results), "rows": tables.count_rows(table, keys)}


def pool(analysis: dict, results: dict[str, dict]) -> dict:
    table = pool_table(results, analysis.get("by"))
    return {**table, "chi_square": chi_square(table)}  # Pearson test of independence (two-way tables)


def chi_square(pooled: dict) -> dict | None:
    """The test for a two-way crosstab result, ``None`` for any other shape."""
    from scipy.stats import chi2  # lazily: the node imports this module for its site half

    rows = pooled.get("rows") or []
    if pooled.get("type") != "crosstab" or len(pooled.get("columns") or []) != 2 or not rows:
        return None
    # a category whose every cell is hidden at every site (empty and small cells read the same) is
    # left out, and the test is that of the remaining table: said in the note
    left_out = []
    for d in (0, 1):
        for label in sorted({str(r["key"][d]) for r in rows}):
            if all(r["pooled"].get("n") is None for r in rows if str(r["key"][d]) == label):
                left_out.append(label)
    rows = [r for r in rows if str(r["key"][0]) not in left_out and str(r["key"][1]) not in left_out]
    incomplete = sorted({s for r in rows for s in r["pooled"].get("suppressed_at") or []})
    if not rows or incomplete or any(r["pooled"].get("n") is None for r in rows):
        return {"statistic": None, "df": None, "p": None,
                "note": f"not computed: cells suppressed at {', '.join(incomplete) or 'a site'}"}
    row_labels = sorted({str(r["key"][0]) for r in rows})
    col_labels = sorted({str(r["key"][1]) for r in rows})
    observed = np.zeros((len(row_labels), len(col_labels)))
    for r in rows:
        observed[row_labels.index(str(r["key"][0])), col_labels.index(str(r["key"][1]))] += r["pooled"]["n"]
    observed = observed[observed.sum(axis=1) > 0][:, observed.sum(axis=0) > 0]
    if min(observed.shape) < 2:
        return {"statistic": None, "df": None, "p": None, "note": "needs at least two non-empty rows and columns"}
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    df = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    out = {"statistic": statistic, "df": df, "p": float(chi2.sf(statistic, df)), "min_expected": float(expected.min())}
    if left_out:
        out["note"] = f"categories with every cell suppressed left out: {', '.join(left_out)}"
    return out

KIND = Kind(model=S.CrosstabAnalysis, site=site, pool=pool, person_cells=person_cells)
