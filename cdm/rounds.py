"""One site's answer to a multi-round analysis, computed from plain arrays (the shared kernels).

How to test: ``.venv/bin/python -m pytest tests/test_rounds.py -q`` checks every kernel against a
direct (slow, obviously correct) computation; ``tests/test_stats_*.py`` split real data sets across
sites, call these kernels per site and check that the coordinator's pooled result equals lifelines /
statsmodels / numpy on the pooled data.

The node compiles a spec's cohort and variables to arrays and calls one function here; the
coordinator (``coordinator/stats/``) sums the results over sites.  Shapes are those of
docs/analysis-rounds.md and everything returned is JSON-able (lists, floats, ints, str keys), so a
node can release it after its disclosure policy without conversion.  Nothing here knows about SQL,
sites or policy.

Conventions:

* Cox partial likelihood (Cox 1972); ties by Breslow (1974) or Efron (1977).  ``hessian`` is the second
  derivative of the log-likelihood (negative semi-definite), so Newton's step is ``-H^-1 g``.
* Counting-process data (Andersen & Gill 1982): a row ``(start, stop, event)`` is at risk at time
  ``t`` iff ``start < t <= stop``.  When every ``start`` is 0 a row is at risk iff ``stop >= t``
  (plain right-censored data, as lifelines ``CoxPHFitter``; an event at time 0 is then kept).
* Risk-set sums are step functions of ``t`` that change only at this site's start/stop times, so
  :func:`cox_risk_sums` releases them at those *change points*; for any other time ``t`` the value
  is the one at the smallest released change point ``>= t`` (0 past the last).  This is how the
  coordinator evaluates one site's risk set at another site's event times without a further round.
"""

from __future__ import annotations

import math

import numpy as np

TIES = ("breslow", "efron")


# -- validation -------------------------------------------------------------------------------------


def _vector(values, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} values, expected {n}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has missing or non-finite values")
    return array


def _matrix(X, n: int) -> np.ndarray:
    array = np.asarray(X, dtype=float)
    if array.ndim == 1:
        array = array.reshape(n, -1) if n else array.reshape(0, -1)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"X must be an n x p matrix with n={n}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("X has missing or non-finite values")
    return array


def _events(event, n: int) -> np.ndarray:
    array = _vector(event, "event", n)
    if not np.all((array == 0) | (array == 1)):
        raise ValueError("event must be 0 (censored) or 1 (event)")
    return array.astype(bool)


def _survival_rows(start, stop, event, X, beta):
    stop = _vector(stop, "stop")
    n = stop.shape[0]
    start = np.zeros(n) if start is None else _vector(start, "start", n)
    if np.any(stop < 0):
        raise ValueError("stop times must be >= 0")
    if np.any(start >= stop) and np.any(start != 0):  # all-zero starts: plain data, where stop = 0 is allowed
        raise ValueError("every interval needs start < stop")
    X = _matrix(X, n)
    beta = _vector(beta, "beta", X.shape[1])
    return start, stop, _events(event, n), X, beta


def _ties(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    return ties


# -- Kaplan-Meier -------------------------------------------------------------------------------------


def _label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def bin_time(time, bin_days: float) -> np.ndarray:
    """Round times *up* to the shared grid: ``ceil(time / bin_days) * bin_days`` (an event in a bin is
    counted at the bin's upper edge, so every site reports on the same grid)."""
    if not bin_days > 0:
        raise ValueError("bin_days must be > 0")
    return np.ceil(np.asarray(time, dtype=float) / bin_days) * bin_days


def km_counts(time, event, bin_days, group=None) -> dict:
    """Per group, at each binned time where anything happens: number at risk, events, censored.

    ``at_risk`` at ``t`` counts rows whose binned time is ``>= t`` (the KM convention: a censoring in
    a bin counts as still at risk at that bin's events).
    """
    time = _vector(time, "time")
    n = time.shape[0]
    if np.any(time < 0):
        raise ValueError("time must be >= 0")
    event = _events(event, n)
    binned = bin_time(time, bin_days)
    labels = np.array(["all"] * n, dtype=object) if group is None else np.array([_label(g) for g in group], dtype=object)
    if labels.shape[0] != n:
        raise ValueError(f"group has {labels.shape[0]} values, expected {n}")
    out = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        t, ev = binned[mask], event[mask]
        times, inverse = np.unique(t, return_inverse=True)
        events = np.bincount(inverse, weights=ev, minlength=times.size).astype(int)
        leaving = np.bincount(inverse, minlength=times.size)
        at_risk = leaving[::-1].cumsum()[::-1]
        out[label] = {"times": times.tolist(), "at_risk": at_risk.tolist(), "events": events.tolist(),
                      "censored": (leaving - events).tolist()}
    return out


# -- Cox partial likelihood ---------------------------------------------------------------------------


def _suffix(values: np.ndarray) -> np.ndarray:
    """suffix[k] = sum of values[k:] (with a trailing 0), summed from the small end for accuracy."""
    out = np.zeros((values.shape[0] + 1,) + values.shape[1:])
    out[:-1] = np.cumsum(values[::-1], axis=0)[::-1]
    return out


def _tail_sums(key, X, w, times, second_order):
    """Sums of w, w x (and w x x') over rows with ``key >= t`` for each of ``times``.

    Rows are sorted once and summed per distinct key (``reduceat``) before the reverse cumulative
    sum, so the cumulative pass runs over distinct times, not rows."""
    order = np.argsort(key, kind="stable")
    keys, first = np.unique(key[order], return_index=True)
    Xs, ws = X[order], w[order]
    wx = ws[:, None] * Xs
    parts = [ws, wx] + ([wx[:, :, None] * Xs[:, None, :]] if second_order else [])
    at = np.searchsorted(keys, times, side="left")
    if keys.size == 0:
        return [np.zeros((len(times),) + part.shape[1:]) for part in parts]
    return [_suffix(np.add.reduceat(part, first, axis=0))[at] for part in parts]


def _risk_set_sums(start, stop, X, w, times, second_order=True):
    """S0, S1, S2 over the rows at risk at each of ``times``: sum over {stop >= t} minus {start >= t}."""
    sums = _tail_sums(stop, X, w, times, second_order)
    if np.any(start != 0):
        entering = _tail_sums(start, X, w, times, second_order)
        sums = [a - b for a, b in zip(sums, entering)]
    return sums if second_order else sums + [None]


def _event_sums(stop, event, X, w, times):
    """Per time: number of events, sum of x over them, and (Efron) w, w x, w x x' summed over them."""
    m, p = times.shape[0], X.shape[1]
    rows = np.nonzero(event)[0]
    rows = rows[np.argsort(stop[rows], kind="stable")]
    index = np.searchsorted(times, stop[rows])
    slots, first = np.unique(index, return_index=True)
    xe, we = X[rows], w[rows]
    wx = we[:, None] * xe
    out = [np.zeros(m), np.zeros((m, p)), np.zeros(m), np.zeros((m, p)), np.zeros((m, p, p))]
    if rows.size:
        parts = [np.ones(rows.size), xe, we, wx, wx[:, :, None] * xe[:, None, :]]
        for target, part in zip(out, parts):
            target[slots] = np.add.reduceat(part, first, axis=0)
    return out


def cox_from_sums(beta, d, sum_x_events, s0, s1, s2, s0_ties=None, s1_ties=None, s2_ties=None,
                  ties="breslow", log_scale=0.0) -> dict:
    """Log partial likelihood, gradient and Hessian from per-event-time sums (rows with d = 0 ignored).

    Breslow: ``l = sum_t [x_D'b - d log S0]``.  Efron: ``l = sum_t [x_D'b - sum_{k<d} log(S0 - k/d S0_D)]``
    with ``S_D`` the sums over the ``d`` tied events.  ``log_scale`` is ``c`` when the weights were
    computed as ``exp(x'b - c)`` for numerical range; it is added back to the log-likelihood.
    Used by the site (stratified) and by the coordinator on pooled sums (pooled baseline).
    """
    ties = _ties(ties)
    beta = np.asarray(beta, dtype=float)
    d = np.asarray(d, dtype=float)
    keep = d > 0
    d, sx, s0, s1, s2 = d[keep], np.asarray(sum_x_events, float)[keep], np.asarray(s0, float)[keep], \
        np.asarray(s1, float)[keep], np.asarray(s2, float)[keep]
    p = beta.shape[0]
    sx, s1, s2 = sx.reshape(-1, p), s1.reshape(-1, p), s2.reshape(-1, p, p)
    loglik = float(np.sum(sx @ beta) - log_scale * d.sum()) if d.size else 0.0
    gradient = sx.sum(axis=0) if d.size else np.zeros(p)
    hessian = np.zeros((p, p))
    if np.any(s0 <= 0):
        raise ValueError("an event time has an empty risk set (event outside every interval?)")
    if ties == "breslow" or d.size == 0 or np.all(d == 1):
        loglik -= float(np.sum(d * np.log(s0)))
        mean = s1 / s0[:, None]
        gradient = gradient - (d[:, None] * mean).sum(axis=0)
        hessian -= np.einsum("t,tij->ij", d / s0, s2) - np.einsum("t,ti,tj->ij", d, mean, mean)
        return {"loglik": loglik, "gradient": gradient, "hessian": hessian}
    s0t, s1t, s2t = (np.asarray(a, float)[keep] for a in (s0_ties, s1_ties, s2_ties))
    s1t, s2t = s1t.reshape(-1, p), s2t.reshape(-1, p, p)
    # Efron's k-th term uses a_k = S - f_k S_D with f_k = k/d.  Every vector/matrix sum over k is linear
    # in S and S_D, so only scalar sums over k are needed: A = sum 1/a0, B = sum f/a0, C = sum 1/a0^2,
    # D = sum f/a0^2, E = sum f^2/a0^2 (one cheap pass per k over the times, not over p x p arrays).
    log_sum, A, B, C, D, E = (np.zeros(d.shape[0]) for _ in range(6))
    for k in range(int(d.max())):
        rows = d > k
        f = k / d[rows]
        a0 = s0[rows] - f * s0t[rows]
        if np.any(a0 <= 0):
            raise ValueError("Efron risk-set sum is not positive (inconsistent tied-event sums)")
        log_sum[rows] += np.log(a0)
        A[rows] += 1 / a0
        B[rows] += f / a0
        C[rows] += 1 / a0 ** 2
        D[rows] += f / a0 ** 2
        E[rows] += f * f / a0 ** 2
    loglik -= float(log_sum.sum())
    gradient = gradient - (A @ s1 - B @ s1t)
    cross = np.einsum("t,ti,tj->ij", D, s1, s1t)
    hessian -= (np.einsum("t,tij->ij", A, s2) - np.einsum("t,tij->ij", B, s2t)
                - (np.einsum("t,ti,tj->ij", C, s1, s1) - cross - cross.T + np.einsum("t,ti,tj->ij", E, s1t, s1t)))
    return {"loglik": loglik, "gradient": gradient, "hessian": hessian}


def cox_stratified(start, stop, event, X, beta, ties="breslow") -> dict:
    """This site's own partial likelihood (its risk sets only) at ``beta``: the site is a stratum.

    Summing these over sites gives the site-stratified Cox model (lifelines ``CoxPHFitter(strata=site)``).
    """
    ties = _ties(ties)
    start, stop, event, X, beta = _survival_rows(start, stop, event, X, beta)
    eta = X @ beta
    shift = float(eta.max()) if eta.size else 0.0
    w = np.exp(eta - shift)
    times = np.unique(stop[event])
    d, sx, s0t, s1t, s2t = _event_sums(stop, event, X, w, times)
    s0, s1, s2 = _risk_set_sums(start, stop, X, w, times)
    fit = cox_from_sums(beta, d, sx, s0, s1, s2, s0t, s1t, s2t, ties=ties, log_scale=shift)
    return {"n": int(stop.shape[0]), "events": int(event.sum()), "loglik": fit["loglik"],
            "gradient": fit["gradient"].tolist(), "hessian": fit["hessian"].tolist()}


def cox_risk_sums(start, stop, event, X, beta, ties="breslow", times=None) -> dict:
    """Per-time sums for the pooled-baseline Cox model (one risk set across all sites).

    ``times`` are this site's distinct start/stop times (the change points of its risk set, see the
    module docstring), or the grid given (secure aggregation: every site on the pooled event times,
    which must hold each of this site's event times); at each: ``d`` events, ``sum_x_events``, and
    ``s0 = sum w``, ``s1 = sum w x``, ``s2 = sum w x x'`` over the rows at risk, ``w = exp(x'beta)``
    (unscaled, so sites add up).  With Efron ties also ``s0_ties``, ``s1_ties``, ``s2_ties``: the
    same sums over the tied events.
    """
    ties = _ties(ties)
    start, stop, event, X, beta = _survival_rows(start, stop, event, X, beta)
    w = np.exp(X @ beta)
    if not np.all(np.isfinite(w)):
        raise ValueError("exp(x'beta) overflows; beta is far from a sensible value")
    if times is None:
        times = np.unique(stop if not np.any(start != 0) else np.concatenate([start, stop]))
    else:
        times = np.asarray(times, dtype=float)
        if np.any(np.diff(times) <= 0):
            raise ValueError("the time grid must be strictly increasing")
        if not np.all(np.isin(stop[event], times)):
            raise ValueError("the time grid misses an event time of this site")
    d, sx, s0t, s1t, s2t = _event_sums(stop, event, X, w, times)
    s0, s1, s2 = _risk_set_sums(start, stop, X, w, times)
    out = {"n": int(stop.shape[0]), "times": times.tolist(), "d": d.astype(int).tolist(),
           "sum_x_events": sx.tolist(), "s0": s0.tolist(), "s1": s1.tolist(), "s2": s2.tolist()}
    if ties == "efron":
        out.update(s0_ties=s0t.tolist(), s1_ties=s1t.tolist(), s2_ties=s2t.tolist())
    return out


def concordance_counts(time, event, risk_score) -> dict:
    """Harrell's C pair counts within this site: a pair is comparable when the shorter time is an
    event; concordant when the higher risk score has the shorter time (Harrell et al. 1996)."""
    from lifelines.utils.concordance import _concordance_summary_statistics

    time = _vector(time, "time")
    n = time.shape[0]
    event = _events(event, n)
    risk = _vector(risk_score, "risk_score", n)
    if n == 0 or not event.any():
        return {"concordant": 0, "tied": 0, "comparable": 0}
    correct, tied, pairs = _concordance_summary_statistics(time, -risk, event)
    return {"concordant": int(correct), "tied": int(tied), "comparable": int(pairs)}


def cox_survival(baseline_times, baseline_cumhaz, beta, x_now):
    """Survival curve ``S(t | x) = exp(-H0(t) exp(x'beta))`` from a baseline cumulative hazard at x = 0
    (Breslow estimator); returns ``(times, survival)`` as numpy arrays."""
    times = _vector(baseline_times, "baseline_times")
    cumhaz = _vector(baseline_cumhaz, "baseline_cumhaz", times.shape[0])
    beta = _vector(beta, "beta")
    x_now = _vector(x_now, "x_now", beta.shape[0])
    if np.any(np.diff(times) < 0) or np.any(np.diff(cumhaz) < 0):
        raise ValueError("baseline times and cumulative hazard must be non-decreasing")
    return times, np.exp(-cumhaz * math.exp(float(x_now @ beta)))


# -- generalised linear models ------------------------------------------------------------------------


def _glm_rows(y, X, weights):
    y = _vector(y, "y")
    n = y.shape[0]
    X = _matrix(X, n)
    w = np.ones(n) if weights is None else _vector(weights, "weights", n)
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")
    return y, X, w


def glm_binomial(y, X, beta, weights=None) -> dict:
    """Logistic log-likelihood, score and Hessian at ``beta`` (X includes the intercept column);
    weights are frequency/probability weights multiplying each row's log-likelihood."""
    y, X, w = _glm_rows(y, X, weights)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("binomial outcome must be 0 or 1")
    beta = _vector(beta, "beta", X.shape[1])
    eta = X @ beta
    from scipy.special import expit  # lazily: scipy.special costs ~0.1 s, paid only by a model round

    mu = expit(eta)
    loglik = float(np.sum(w * (y * eta - np.logaddexp(0.0, eta))))
    gradient = X.T @ (w * (y - mu))
    hessian = -(X * (w * mu * (1 - mu))[:, None]).T @ X
    return {"n": int(y.shape[0]), "loglik": loglik, "gradient": gradient.tolist(), "hessian": hessian.tolist()}


def glm_gaussian(y, X, weights=None) -> dict:
    """Weighted normal-equation sums: X'WX, X'Wy, y'Wy and sum of weights (one round fits OLS/WLS)."""
    y, X, w = _glm_rows(y, X, weights)
    return {"n": int(y.shape[0]), "xtx": ((X * w[:, None]).T @ X).tolist(), "xty": (X.T @ (w * y)).tolist(),
            "yty": float(np.sum(w * y * y)), "sw": float(w.sum())}


# -- radiogenomic analyses ----------------------------------------------------------------------------


def habitat_weight(distance_to_border_mm, registration_error_mm) -> np.ndarray:
    """P(a biopsy lies in its labelled habitat) under isotropic Gaussian registration error.

    Assumption: the true biopsy point is ``N(reported, sigma^2 I)`` and the habitat border is locally
    planar at signed distance ``d`` from the reported point (``d > 0`` inside the labelled habitat,
    ``d < 0`` outside).  Only the displacement normal to the plane matters, so
    ``P = Phi(d / sigma)``.  ``sigma = 0`` means exact registration (1 inside, 0 outside, 0.5 on it).
    """
    from scipy.special import ndtr  # lazily, as expit above

    d = _vector(distance_to_border_mm, "distance_to_border_mm")
    sigma = np.broadcast_to(np.asarray(registration_error_mm, dtype=float), d.shape)
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError("registration_error_mm must be finite and >= 0")
    exact = np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sigma > 0, ndtr(d / np.where(sigma > 0, sigma, 1.0)), exact)


def _probability(value, name):
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def posterior_progression(imaging_progression, ctdna_progression, sens_imaging, spec_imaging, sens_ctdna,
                          spec_ctdna, prior) -> np.ndarray:
    """P(true progression | both test results) by Bayes' rule, the tests conditionally independent
    given the truth: likelihood under progression is ``sens`` for a positive test and ``1 - sens`` for
    a negative one; under no progression ``1 - spec`` and ``spec``."""
    imaging = _events(imaging_progression, len(np.atleast_1d(imaging_progression)))
    ctdna = _events(ctdna_progression, imaging.shape[0])
    se_i, sp_i = _probability(sens_imaging, "sens_imaging"), _probability(spec_imaging, "spec_imaging")
    se_c, sp_c = _probability(sens_ctdna, "sens_ctdna"), _probability(spec_ctdna, "spec_ctdna")
    prior = _probability(prior, "prior")
    if_true = np.where(imaging, se_i, 1 - se_i) * np.where(ctdna, se_c, 1 - se_c) * prior
    if_false = np.where(imaging, 1 - sp_i, sp_i) * np.where(ctdna, 1 - sp_c, sp_c) * (1 - prior)
    total = if_true + if_false
    if np.any(total == 0):
        raise ValueError("test characteristics make an observed result impossible (sens/spec of 0 or 1)")
    return if_true / total


def concordance_table(imaging_progression, ctdna_progression, posterior, band=(0.2, 0.8)) -> dict:
    """2 x 2 agreement table (rows imaging progression yes/no, columns ctDNA progression yes/no) and
    counts per posterior band: ``>= band[1]`` likely progression, ``<= band[0]`` likely response."""
    imaging = _events(imaging_progression, len(np.atleast_1d(imaging_progression)))
    ctdna = _events(ctdna_progression, imaging.shape[0])
    posterior = _vector(posterior, "posterior", imaging.shape[0])
    low, high = float(band[0]), float(band[1])
    if not 0 <= low < high <= 1:
        raise ValueError(f"band must be (low, high) with 0 <= low < high <= 1, got {band}")
    table = [[int(np.sum(imaging & ctdna)), int(np.sum(imaging & ~ctdna))],
             [int(np.sum(~imaging & ctdna)), int(np.sum(~imaging & ~ctdna))]]
    likely_progression = int(np.sum(posterior >= high))
    likely_response = int(np.sum(posterior <= low))
    return {"n": int(imaging.shape[0]), "table": table, "likely_progression": likely_progression,
            "indeterminate": int(imaging.shape[0]) - likely_progression - likely_response,
            "likely_response": likely_response}
