"""Pooled means, variances, covariance and Pearson correlation from one ``crossprod`` round.

Each site releases, over its complete cases, ``n``, the sums ``sum x`` and the raw cross-products
``sum x x'`` (docs/analysis-rounds.md).  These are additive, so the pooled sample covariance is
``(C - n m m') / (n - 1)`` with ``m = s / n`` (exactly numpy's ``np.cov`` on the pooled rows, up to
floating-point rounding of the one-pass formula) and the correlation ``cov_ij / sqrt(cov_ii cov_jj)``.

Site half (``crossprod``): refused ``MIN_ROWS`` below the site's model row limits.
"""

from __future__ import annotations

import numpy as np

from cdm import spec as S
from cdm.analyses.kind import Kind, complete_rows
from cdm.analyses.session import Session, StatsError, array, need
from cdm.errors import Refusal


def pool_crossprod(results: dict[str, dict], p: int) -> tuple[int, np.ndarray, np.ndarray]:
    n, sums, cross = 0, np.zeros(p), np.zeros((p, p))
    for site, r in results.items():
        n += int(need(r, "n", site, "crossprod"))
        sums = sums + array(r, "sums", site, "crossprod", (p,))
        cross = cross + array(r, "cross", site, "crossprod", (p, p))
    return n, sums, cross


def covariance_from_sums(n: int, sums: np.ndarray, cross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sample covariance with n - 1 denominator) from pooled n, sums and cross-products."""
    if n < 2:
        raise StatsError(f"{n} complete rows: a covariance needs at least 2")
    mean = sums / n
    cov = (cross - n * np.outer(mean, mean)) / (n - 1)
    cov = (cov + cov.T) / 2
    return mean, cov


def correlation_from_covariance(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    corr = np.where(np.outer(sd, sd) > 0, np.clip(corr, -1.0, 1.0), np.nan)
    np.fill_diagonal(corr, np.where(sd > 0, 1.0, np.nan))
    return corr


def _json(matrix: np.ndarray) -> list:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in matrix]


def run(analysis, session: Session) -> dict:
    variables = list(analysis.variables)
    p = len(variables)
    n, sums, cross = pool_crossprod(session.round({"type": "crossprod", "variables": variables}), p)
    mean, cov = covariance_from_sums(n, sums, cross)
    corr = correlation_from_covariance(cov)
    return {"type": "correlation", "variables": variables, "sites": list(session.sites or []), "n": n,
            "mean": mean.tolist(), "variance": np.diag(cov).tolist(), "sd": np.sqrt(np.clip(np.diag(cov), 0, None)).tolist(),
            "covariance": _json(cov), "correlation": _json(corr), "rounds": session.rounds}


# -- site half -------------------------------------------------------------------------------------


def site(spec: S.Spec, data, policy) -> dict:
    """``crossprod``: n, sums and raw cross-products over the complete rows."""
    a = spec.analysis
    rows = complete_rows(data.values, a.variables)
    n, p = rows.shape
    if n < policy.min_rows_model or n < policy.rows_per_parameter * p:
        raise Refusal("MIN_ROWS", f"needs at least {max(policy.min_rows_model, policy.rows_per_parameter * p)} complete rows")
    policy.check_columns(rows, list(a.variables))
    return {"n": int(n), "sums": rows.sum(0).tolist(), "cross": (rows.T @ rows).tolist()}


KIND = Kind(model=S.CorrelationAnalysis, site_model=S.CrossprodAnalysis, site=site, run=run, releases_model=True)
