"""Newton-Raphson with step-halving as a replayable state machine: the coordinator drives it, and every
node replays it to check the parameters a round asks for (algorithm-locked rounds).

The coordinator fits Cox and logistic models by rounds: each proposes ``beta``, the sites return
their share of the log-likelihood, score and information at it, and the pooled fit decides the next
``beta``.  If the coordinator (or a researcher posing as one) could choose ``beta`` freely it could
aim a round at one person (a huge coefficient on a rare covariate makes ``exp(x'beta)`` one person's
row).  So every round carries the pooled fits of the rounds before it (:func:`lock`), and a node
recomputes the ``beta`` the algorithm must propose next from them (:func:`expected_beta`) and refuses
a round whose ``beta`` differs.  Nothing but the starting point ``0`` and the pooled fits enters.

The algorithm (as R's ``glm.fit`` / lifelines): the full Newton step ``-H^-1 g``; a step that lowers
the log-likelihood is halved (at most ``max_halvings`` times); stop when the full step is below
``tol`` in every coordinate, after ``max_iter`` iterations, when no step length improves, or when a
coefficient passes :data:`DIVERGENCE`.
"""

from __future__ import annotations

import numpy as np

from cdm.errors import RadfedError

#: A coefficient past this (a ratio beyond e^25 ~ 7e10) is diverging, not converging: (quasi-)complete
#: separation in a logistic model, a monotone likelihood in a Cox model (Heinze & Schemper 2001/2002).
DIVERGENCE = 25.0
MAX_HALVINGS = 30
LOCK = "newton/1"


class SingularInformation(RadfedError, ValueError):
    """The information matrix cannot be inverted (collinear or constant covariates, no events)."""


def newton_step(gradient, hessian) -> np.ndarray:
    try:
        return np.linalg.solve(-np.asarray(hessian, dtype=float), np.asarray(gradient, dtype=float))
    except np.linalg.LinAlgError:
        raise SingularInformation("the information matrix is singular: collinear or constant covariates, "
                                  "or no events/variation in the pooled data") from None


def improves(trial: dict, fit: dict) -> bool:
    new, old = float(trial["loglik"]), float(fit["loglik"])
    return bool(np.isfinite(new) and new >= old - 1e-12 * max(1.0, abs(old)))


class Newton:
    """``propose()`` the next ``beta`` to evaluate (None when finished), then ``observe(fit)`` its fit."""

    def __init__(self, p: int, max_iter: int = 50, tol: float = 1e-9, max_halvings: int = MAX_HALVINGS,
                 start=None):
        self.max_iter, self.tol, self.max_halvings = int(max_iter), float(tol), int(max_halvings)
        self.beta = np.zeros(p) if start is None else np.asarray(start, dtype=float)
        self.fit: dict | None = None
        self.candidate: np.ndarray | None = self.beta
        self.step = np.zeros(p)
        self.tries = 0
        self.iterations = self.halvings = 0
        self.converged = self.stalled = False
        self.diverging: list[int] = []
        self.history: list[float] = []

    def propose(self) -> np.ndarray | None:
        return self.candidate

    def observe(self, trial: dict) -> None:
        if self.candidate is None:
            raise ValueError("the fit has finished: no round is pending")
        if self.fit is None:  # the starting point
            self.fit = trial
            self.history.append(float(trial["loglik"]))
            self.step = newton_step(trial["gradient"], trial["hessian"])
            self._next_iteration()
            return
        if not improves(trial, self.fit):
            if self.tries < self.max_halvings:
                self.tries += 1
                self.halvings += 1
                self.step = self.step / 2
                self.candidate = self.beta + self.step
                return
            self.stalled, self.candidate = True, None  # no step length improves: keep the best fit found
            return
        self.beta, self.fit = self.candidate, trial
        self.history.append(float(trial["loglik"]))
        self.step = newton_step(trial["gradient"], trial["hessian"])
        if np.max(np.abs(self.beta), initial=0.0) > DIVERGENCE:
            self.diverging = [int(i) for i in np.flatnonzero(np.abs(self.beta) > DIVERGENCE)]
            self.candidate = None
            return
        self._next_iteration()

    def _next_iteration(self) -> None:
        if np.max(np.abs(self.step), initial=0.0) < self.tol:
            self.converged, self.candidate = True, None
        elif self.iterations >= self.max_iter:
            self.candidate = None
        else:
            self.iterations += 1
            self.tries = 0
            self.candidate = self.beta + self.step

    def lock(self, fits: list[dict]) -> dict:
        """What a round carries so that a node can recompute its ``beta`` (:func:`expected_beta`)."""
        return {"algorithm": LOCK, "max_iter": self.max_iter, "tol": self.tol,
                "fits": [{"loglik": float(f["loglik"]), "gradient": np.asarray(f["gradient"], float).tolist(),
                          "hessian": np.asarray(f["hessian"], float).tolist()} for f in fits]}


def expected_beta(p: int, lock: dict | None) -> np.ndarray | None:
    """The ``beta`` the algorithm proposes after the pooled fits in ``lock`` (zeros without one);
    None when those fits end the algorithm (no further round is due).  Raises ValueError on a
    malformed lock."""
    lock = lock or {}
    if lock and lock.get("algorithm") != LOCK:
        raise ValueError(f"unknown round lock {lock.get('algorithm')!r} (expected {LOCK})")
    fits = lock.get("fits") or []
    if not isinstance(fits, list):
        raise ValueError("lock.fits must be a list")
    machine = Newton(p, lock.get("max_iter", 50), lock.get("tol", 1e-9))
    if not 0 < machine.max_iter <= 1000 or not 0 < machine.tol < 1:
        raise ValueError("lock: max_iter must be in 1..1000 and tol in (0, 1)")
    for fit in fits:
        if machine.propose() is None:
            raise ValueError("lock has more rounds than the algorithm takes")
        gradient, hessian = np.asarray(fit["gradient"], float), np.asarray(fit["hessian"], float)
        if gradient.shape != (p,) or hessian.shape != (p, p):
            raise ValueError("lock: a fit has the wrong shape")
        machine.observe({"loglik": float(fit["loglik"]), "gradient": gradient, "hessian": hessian})
    return machine.propose()


def same_beta(proposed, expected, rtol: float = 1e-9) -> bool:
    """Equal up to what different linear-algebra libraries may round differently (far below any
    coefficient that could single a person out)."""
    proposed, expected = np.asarray(proposed, float), np.asarray(expected, float)
    return proposed.shape == expected.shape and bool(np.all(np.abs(proposed - expected) <= rtol * (1 + np.abs(expected))))
