"""Newton-Raphson on pooled score and information, with step-halving and a convergence report.

Each evaluation of the log-likelihood is one round to the sites (they return their share of the
log-likelihood, gradient and Hessian at the proposed ``beta``, and sums are exact), so the number of
rounds is the number of evaluations.  Step-halving (as in R's ``glm.fit`` / lifelines) keeps the
log-likelihood from decreasing.  Convergence: the full Newton step is below ``tol`` in every
coordinate; the reported fit is the one *at* the reported ``beta`` (no unevaluated final step), so
log-likelihood, standard errors and ``beta`` are mutually consistent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cdm.analyses.session import StatsError

Fit = dict  # {"loglik": float, "gradient": ndarray[p], "hessian": ndarray[p, p], ...}


def newton_step(fit: Fit) -> np.ndarray:
    try:
        return np.linalg.solve(-np.asarray(fit["hessian"]), np.asarray(fit["gradient"]))
    except np.linalg.LinAlgError:
        raise StatsError("the information matrix is singular: collinear or constant covariates, "
                         "or no events/variation in the pooled data") from None


#: A coefficient past this (a ratio beyond e^25 ~ 7e10) is diverging, not converging: (quasi-)complete
#: separation in a logistic model, a monotone likelihood in a Cox model (Heinze & Schemper 2001/2002).
DIVERGENCE = 25.0


def maximise(evaluate: Callable[[np.ndarray], Fit], beta0, max_iter: int = 50, tol: float = 1e-9,
             max_halvings: int = 30) -> tuple[np.ndarray, Fit, dict]:
    """Maximise the log-likelihood ``evaluate(beta)`` returns; ``(beta, fit at beta, report)``.

    Stops early, unconverged, when a coefficient diverges (see :data:`DIVERGENCE`): every further
    round would only push it further, and the report names the coefficient's index."""
    beta = np.asarray(beta0, dtype=float)
    fit = evaluate(beta)
    history = [float(fit["loglik"])]
    iterations, halvings, converged, stalled, diverging = 0, 0, False, False, []
    step = newton_step(fit)
    while True:
        if np.max(np.abs(step), initial=0.0) < tol:
            converged = True
            break
        if iterations >= max_iter:
            break
        iterations += 1
        candidate = beta + step
        trial = evaluate(candidate)
        tries = 0
        while not _improves(trial, fit) and tries < max_halvings:
            step = step / 2
            candidate = beta + step
            trial = evaluate(candidate)
            tries += 1
        halvings += tries
        if not _improves(trial, fit):  # no step length improves: keep the best fit found, say so
            stalled = True
            break
        beta, fit = candidate, trial
        history.append(float(fit["loglik"]))
        step = newton_step(fit)
        if np.max(np.abs(beta), initial=0.0) > DIVERGENCE:
            diverging = [int(i) for i in np.flatnonzero(np.abs(beta) > DIVERGENCE)]
            break
    report = {"converged": converged, "iterations": iterations, "step_halvings": halvings,
              "gradient_norm": float(np.linalg.norm(fit["gradient"])),
              "last_step_max": float(np.max(np.abs(step), initial=0.0)), "tol": tol, "max_iter": max_iter,
              "loglik_history": history}
    if diverging:
        report["diverging"] = diverging
        report["message"] = (f"stopped after {iterations} iterations: coefficient(s) {diverging} diverge (|coef| > "
                             f"{DIVERGENCE:g}): separation / monotone likelihood; the estimates and intervals are not usable "
                             "for those coefficients (merge categories or use a penalised model)")
    elif stalled:
        report["message"] = (f"stopped after {iterations} iterations: {max_halvings} step-halvings did not increase "
                             "the log-likelihood (numerically flat or ill-conditioned problem)")
    elif not converged:
        report["message"] = (f"not converged after {iterations} iterations (largest Newton step "
                             f"{report['last_step_max']:.3g} > tol {tol:g}); separation or a flat likelihood?")
    return beta, fit, report


def _improves(trial: Fit, fit: Fit) -> bool:
    new, old = float(trial["loglik"]), float(fit["loglik"])
    return np.isfinite(new) and new >= old - 1e-12 * max(1.0, abs(old))
