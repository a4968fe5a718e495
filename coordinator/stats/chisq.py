"""Pearson's chi-square test of independence for a pooled two-way crosstab.

Takes the table-shaped output of :func:`coordinator.aggregate.pool_crosstab` (rows keyed by
``[row_label, column_label]`` with pooled counts) and returns ``X^2 = sum (O - E)^2 / E`` with
``E = row total x column total / n`` and ``(r - 1)(c - 1)`` degrees of freedom, without continuity
correction (scipy ``chi2_contingency(correction=False)``).  A cell no site reported is a zero count.
When any pooled cell is incomplete (a site suppressed it) the test is not computed: a lower bound
is not a count.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2


def chi_square(pooled: dict) -> dict | None:
    """The test for a two-way crosstab result, ``None`` for any other shape."""
    rows = pooled.get("rows") or []
    if pooled.get("type") != "crosstab" or len(pooled.get("columns") or []) != 2 or not rows:
        return None
    incomplete = sorted({s for r in rows for s in r["pooled"].get("suppressed_at") or []})
    if incomplete or any(r["pooled"].get("n") is None for r in rows):
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
    return {"statistic": statistic, "df": df, "p": float(chi2.sf(statistic, df)),
            "min_expected": float(expected.min())}
