"""Newton-Raphson on pooled score and information, with step-halving and a convergence report.

Each evaluation of the log-likelihood is one round to the sites (they return their share of the
log-likelihood, gradient and Hessian at the proposed ``beta``, and sums are exact), so the number of
rounds is the number of evaluations.  Step-halving (as in R's ``glm.fit`` / lifelines) keeps the
log-likelihood from decreasing.  Convergence: the full Newton step is below ``tol`` in every
coordinate; the reported fit is the one *at* the reported ``beta`` (no unevaluated final step), so
log-likelihood, standard errors and ``beta`` are mutually consistent.

The algorithm itself is :class:`cdm.newton.Newton`, shared with the nodes: each round carries the
pooled fits so far (``lock``) and every node recomputes the ``beta`` it is asked about.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cdm.analyses.session import StatsError
from cdm.newton import DIVERGENCE, MAX_HALVINGS, Newton, SingularInformation

Fit = dict  # {"loglik": float, "gradient": ndarray[p], "hessian": ndarray[p, p], ...}

__all__ = ["DIVERGENCE", "maximise"]


def maximise(evaluate: Callable[[np.ndarray, dict], Fit], beta0, max_iter: int = 50, tol: float = 1e-9,
             max_halvings: int = MAX_HALVINGS) -> tuple[np.ndarray, Fit, dict]:
    """Maximise the log-likelihood ``evaluate(beta, lock)`` returns, from ``beta0`` (the nodes accept
    only ``0``); ``(beta, fit at beta, report)``.  ``lock`` is what the round must carry for the nodes.

    Stops early, unconverged, when a coefficient diverges (see :data:`DIVERGENCE`): every further
    round would only push it further, and the report names the coefficient's index."""
    beta0 = np.asarray(beta0, dtype=float)
    machine = Newton(beta0.shape[0], max_iter, tol, max_halvings, start=beta0)
    fits: list[Fit] = []
    try:
        while (beta := machine.propose()) is not None:
            fit = evaluate(beta, machine.lock(fits))
            fits.append(fit)
            machine.observe(fit)
    except SingularInformation as exc:
        raise StatsError(str(exc)) from None
    beta, fit, step = machine.beta, machine.fit, machine.step
    report = {"converged": machine.converged, "iterations": machine.iterations, "step_halvings": machine.halvings,
              "gradient_norm": float(np.linalg.norm(fit["gradient"])),
              "last_step_max": float(np.max(np.abs(step), initial=0.0)), "tol": tol, "max_iter": max_iter,
              "loglik_history": machine.history}
    iterations = machine.iterations
    if machine.diverging:
        report["diverging"] = machine.diverging
        report["message"] = (f"stopped after {iterations} iterations: coefficient(s) {machine.diverging} diverge "
                             f"(|coef| > {DIVERGENCE:g}): separation / monotone likelihood; the estimates and intervals "
                             "are not usable for those coefficients (merge categories or use a penalised model)")
    elif machine.stalled:
        report["message"] = (f"stopped after {iterations} iterations: {max_halvings} step-halvings did not increase "
                             "the log-likelihood (numerically flat or ill-conditioned problem)")
    elif not machine.converged:
        report["message"] = (f"not converged after {iterations} iterations (largest Newton step "
                             f"{report['last_step_max']:.3g} > tol {tol:g}); separation or a flat likelihood?")
    return beta, fit, report
