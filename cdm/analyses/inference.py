"""Wald inference from a maximum-likelihood fit: the coefficient table lifelines and statsmodels print.

Standard errors are the square roots of the diagonal of the inverse observed information ``(-H)^-1``;
``z = coef / se``; two-sided normal p-values; 95% Wald intervals ``coef -/+ 1.959964 se`` (and their
exponentials for ratio scales).  ``-log2(p)`` is lifelines' "surprisal" column.
"""

from __future__ import annotations

import math

import numpy as np

from cdm.analyses.session import StatsError

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975), written out: scipy loads only when a table is made


def covariance(hessian) -> np.ndarray:
    try:
        return np.linalg.inv(-np.asarray(hessian, dtype=float))
    except np.linalg.LinAlgError:
        raise StatsError("the information matrix is singular; standard errors are undefined") from None


def coefficient_table(names: list[str], beta, cov, exponentiate: str | None = None) -> list[dict]:
    """One row per coefficient; ``exponentiate`` names the ratio column (``exp(coef)`` for a hazard
    ratio, ``odds_ratio``) and adds its interval."""
    from scipy.stats import norm  # lazily: the node imports this module and never calls it

    beta = np.asarray(beta, dtype=float)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    rows = []
    for name, b, s in zip(names, beta, se):
        z = float(b / s) if s > 0 else None  # None, not NaN: results are stored as strict JSON
        p = float(2 * norm.sf(abs(z))) if z is not None else None
        row = {"covariate": name, "coef": float(b), "se": float(s), "z": z, "p": p,
               "coef_lower_95": float(b - Z95 * s), "coef_upper_95": float(b + Z95 * s),
               "-log2(p)": float(-math.log2(p)) if p else None}
        if exponentiate:
            row[exponentiate] = _exp(b)
            row[f"{exponentiate}_lower_95"] = _exp(b - Z95 * s)
            row[f"{exponentiate}_upper_95"] = _exp(b + Z95 * s)
        rows.append(row)
    return rows


def _exp(x: float) -> float | None:
    """``exp(x)``, or ``None`` (strict JSON has no infinity) past the float range: a diverging
    coefficient (separation) must still give a readable table."""
    try:
        return math.exp(x)
    except OverflowError:
        return None
