"""Federated generalised linear models: logistic by Newton-Raphson, linear by the normal equations.

Logistic (binomial, logit link): every site returns its log-likelihood, score ``X'W(y - mu)`` and
Hessian ``-X'W diag(mu(1 - mu)) X`` at ``beta`` (:func:`cdm.rounds.glm_binomial`); the sums are the
pooled ones, so Newton-Raphson (= IRLS for the canonical link; McCullagh & Nelder 1989) reaches the
pooled MLE: statsmodels ``GLM(family=Binomial(), freq_weights=w)``.

Linear (gaussian, identity link): one round of ``X'WX``, ``X'Wy``, ``y'Wy`` (:func:`cdm.rounds.glm_gaussian`)
gives ``beta = (X'WX)^-1 X'Wy``, residual sum of squares ``y'Wy - beta'X'Wy`` and
``sigma^2 = RSS / (n - p)``: statsmodels ``OLS`` / ``WLS(weights=w)`` (weights as inverse variances).

Site half (``glm_round``): the per-person frame; MIN_ROWS; a binomial outcome class of 1..min-1 ->
MIN_CELL.
"""

from __future__ import annotations

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.analyses.inference import coefficient_table, covariance
from cdm.analyses.kind import Kind, complete_rows, enough_rows, outcome_classes
from cdm.analyses.newton import maximise
from cdm.analyses.session import Session, StatsError, array, need


def sum_binomial(results: dict[str, dict], q: int, what: str) -> dict:
    fit = {"loglik": 0.0, "gradient": np.zeros(q), "hessian": np.zeros((q, q)), "n": 0}
    for site, r in results.items():
        fit["loglik"] += float(need(r, "loglik", site, what))
        fit["gradient"] = fit["gradient"] + array(r, "gradient", site, what, (q,))
        fit["hessian"] = fit["hessian"] + array(r, "hessian", site, what, (q, q))
        fit["n"] += int(need(r, "n", site, what))
    return fit


def fit_logistic(session: Session, make_round, names: list[str], max_iter: int, tol: float, what: str) -> dict:
    """Newton-Raphson over rounds ``make_round(beta)``; the lifelines/statsmodels-like result."""
    q = len(names)

    def evaluate(beta, lock=None):
        return sum_binomial(session.round(make_round(beta), lock=lock), q, what)

    beta, fit, report = maximise(evaluate, np.zeros(q), max_iter, tol)
    cov = covariance(fit["hessian"])
    loglik = float(fit["loglik"])
    return {"family": "binomial", "link": "logit", "sites": list(session.sites or []), "n": fit["n"],
            "coefficients": coefficient_table(names, beta, cov, exponentiate="odds_ratio"),
            "covariance": cov.tolist(), "loglik": loglik, "deviance": -2 * loglik, "aic": -2 * loglik + 2 * q,
            "convergence": {**report, "rounds": session.rounds}, "rounds": session.rounds}


def fit_linear(results: dict[str, dict], names: list[str]) -> dict:
    q = len(names)
    xtx, xty, yty, n, sw = np.zeros((q, q)), np.zeros(q), 0.0, 0, 0.0
    for site, r in results.items():
        xtx = xtx + array(r, "xtx", site, "glm_round", (q, q))
        xty = xty + array(r, "xty", site, "glm_round", (q,))
        yty += float(need(r, "yty", site, "glm_round"))
        n += int(need(r, "n", site, "glm_round"))
        sw += float(r.get("sw") if r.get("sw") is not None else r["n"])
    if n <= q:
        raise StatsError(f"{n} complete rows for {q} coefficients: the linear model is not identified")
    try:
        beta = np.linalg.solve(xtx, xty)
    except np.linalg.LinAlgError:
        raise StatsError("X'X is singular: collinear or constant covariates") from None
    rss = max(float(yty - beta @ xty), 0.0)
    df_resid = n - q
    scale = rss / df_resid
    cov = scale * np.linalg.inv(xtx)
    rows = coefficient_table(names, beta, cov)
    from scipy.stats import t as student_t  # lazily: the node imports this module for its site half

    crit = float(student_t.ppf(0.975, df_resid))
    for row in rows:  # exact small-sample inference for the normal linear model: t, not z
        row["t"] = row.pop("z")
        row["p"] = float(2 * student_t.sf(abs(row["t"]), df_resid)) if row["t"] is not None else None
        row["coef_lower_95"], row["coef_upper_95"] = row["coef"] - crit * row["se"], row["coef"] + crit * row["se"]
        row.pop("-log2(p)")
    ybar = float(xty[0] / xtx[0, 0]) if names and names[0] == "intercept" else 0.0
    tss = float(yty - sw * ybar * ybar) if names and names[0] == "intercept" else float(yty)
    return {"family": "gaussian", "link": "identity", "n": n, "coefficients": rows, "covariance": cov.tolist(),
            "rss": rss, "df_resid": df_resid, "scale": scale, "r_squared": 1 - rss / tss if tss > 0 else None}


def run(analysis, session: Session) -> dict:
    names = ["intercept"] + list(analysis.covariates)
    base = {"type": "glm_round", "family": analysis.family, "outcome": analysis.outcome,
            "covariates": list(analysis.covariates), "weights": analysis.weights}
    if analysis.family == "gaussian":
        out = fit_linear(session.round({**base, "beta": []}), names)
        out.update(sites=list(session.sites or []), rounds=session.rounds)
    else:
        out = fit_logistic(session, lambda beta: {**base, "beta": [float(b) for b in beta]}, names,
                           analysis.max_iter, analysis.tol, "glm_round")
    return {"type": "glm", "outcome": analysis.outcome, "weights": analysis.weights, **out}


# -- site half -------------------------------------------------------------------------------------


def site(spec: S.Spec, data, policy) -> dict:
    """``glm_round``: this site's sums at ``beta`` (binomial) or its normal-equation sums (gaussian)."""
    a = spec.analysis
    names = [a.outcome, *a.covariates] + ([a.weights] if a.weights else [])
    rows = complete_rows(data.values, names)
    n, p = rows.shape[0], len(a.covariates) + 1
    enough_rows(n, p, policy)
    policy.check_columns(rows, names)
    y = rows[:, 0]
    X = np.column_stack([np.ones(n), rows[:, 1:1 + len(a.covariates)]])
    w = rows[:, -1] if a.weights else None
    if a.family == "gaussian":
        return rounds.glm_gaussian(y, X, w)
    outcome_classes(y, policy, "rows")
    return rounds.glm_binomial(y, X, a.beta, w)


KIND = Kind(model=S.GLMAnalysis, site_model=S.GLMRound, site=site, run=run, checks_data=True, releases_model=True,
            rounds="gaussian: 1 round; binomial: one round per Newton iteration (at most max_iter) + 1")
