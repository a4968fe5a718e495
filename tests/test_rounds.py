"""cdm.rounds kernels against direct, obviously-correct computations (loops, finite differences)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cdm import rounds


def survival_data(n=60, p=3, seed=0, counting=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    stop = rng.integers(1, 15, n).astype(float)  # small integer times: many ties
    event = (rng.uniform(size=n) < 0.6).astype(int)
    start = np.where(rng.uniform(size=n) < 0.4, np.floor(stop * rng.uniform(size=n)), 0.0) if counting else None
    return start, stop, event, X, rng.normal(scale=0.3, size=p)


def naive_loglik(start, stop, event, X, beta, ties):
    """Partial log-likelihood by looping over event times and risk sets."""
    start = np.zeros_like(stop) if start is None else start
    counting = np.any(start != 0)
    eta = X @ beta
    total = 0.0
    for t in np.unique(stop[event == 1]):
        at_risk = (start < t) & (stop >= t) if counting else stop >= t
        dead = (stop == t) & (event == 1)
        d = dead.sum()
        total += eta[dead].sum()
        for k in range(d):
            frac = k / d if ties == "efron" else 0.0
            total -= math.log(np.exp(eta[at_risk]).sum() - frac * np.exp(eta[dead]).sum())
    return total


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("counting", [False, True])
def test_cox_stratified_matches_loop_and_finite_differences(ties, counting):
    start, stop, event, X, beta = survival_data(counting=counting, seed=int(counting))
    out = rounds.cox_stratified(start, stop, event, X, beta, ties)
    assert json.loads(json.dumps(out)) == out
    assert out["loglik"] == pytest.approx(naive_loglik(start, stop, event, X, beta, ties), rel=1e-12)
    h = 1e-6
    for j in range(len(beta)):
        e = np.eye(len(beta))[j] * h
        up = rounds.cox_stratified(start, stop, event, X, beta + e, ties)
        down = rounds.cox_stratified(start, stop, event, X, beta - e, ties)
        assert out["gradient"][j] == pytest.approx((up["loglik"] - down["loglik"]) / (2 * h), rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(np.array(out["hessian"])[j],
                                   (np.array(up["gradient"]) - np.array(down["gradient"])) / (2 * h), rtol=1e-5, atol=1e-7)
    assert out["n"] == len(stop) and out["events"] == int(event.sum())


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_risk_sums_are_step_functions_at_change_points_and_give_the_same_likelihood(ties):
    start, stop, event, X, beta = survival_data(counting=True, seed=5)
    out = rounds.cox_risk_sums(start, stop, event, X, beta, ties)
    w = np.exp(X @ beta)
    assert out["times"] == sorted(set(start.tolist()) | set(stop.tolist()))
    for t, s0, d in zip(out["times"], out["s0"], out["d"]):
        assert s0 == pytest.approx(w[(start < t) & (stop >= t)].sum(), rel=1e-12, abs=1e-12)
        assert d == int(((stop == t) & (event == 1)).sum())
    fit = rounds.cox_from_sums(beta, out["d"], out["sum_x_events"], out["s0"], out["s1"], out["s2"],
                               out.get("s0_ties"), out.get("s1_ties"), out.get("s2_ties"), ties=ties)
    assert fit["loglik"] == pytest.approx(rounds.cox_stratified(start, stop, event, X, beta, ties)["loglik"], rel=1e-12)
    assert ("s0_ties" in out) == (ties == "efron")


def test_survival_input_errors_are_clear():
    start, stop, event, X, beta = survival_data()
    with pytest.raises(ValueError, match="event must be 0"):
        rounds.cox_stratified(None, stop, event * 2, X, beta)
    with pytest.raises(ValueError, match="non-finite"):
        rounds.cox_stratified(None, stop, event, np.where(X > 1, np.nan, X), beta)
    with pytest.raises(ValueError, match="start < stop"):
        rounds.cox_risk_sums(stop, stop, event, X, beta)
    with pytest.raises(ValueError, match="beta has 2 values"):
        rounds.cox_stratified(None, stop, event, X, beta[:2])
    with pytest.raises(ValueError, match="ties"):
        rounds.cox_stratified(None, stop, event, X, beta, ties="exact")
    with pytest.raises(ValueError, match="time must be >= 0"):
        rounds.km_counts([-1, 2], [1, 0], 7)
    with pytest.raises(ValueError, match="bin_days"):
        rounds.km_counts([1, 2], [1, 0], 0)


def test_km_counts_by_loop():
    rng = np.random.default_rng(1)
    time, event = rng.integers(0, 100, 80).astype(float), rng.integers(0, 2, 80)
    group = rng.choice([0.0, 1.0], 80)
    out = rounds.km_counts(time, event, 7, group)
    assert sorted(out) == ["0", "1"]
    binned = np.ceil(time / 7) * 7
    for label, g in out.items():
        mask = group == float(label)
        assert g["times"] == sorted(set(binned[mask].tolist()))
        for t, n, d, c in zip(g["times"], g["at_risk"], g["events"], g["censored"]):
            assert n == (binned[mask] >= t).sum()
            assert d == ((binned[mask] == t) & (event[mask] == 1)).sum()
            assert c == ((binned[mask] == t) & (event[mask] == 0)).sum()
    assert list(rounds.km_counts(time, event, 1)) == ["all"]


def test_glm_kernels():
    rng = np.random.default_rng(2)
    X = np.column_stack([np.ones(50), rng.normal(size=(50, 2))])
    y = (rng.uniform(size=50) < 0.4).astype(float)
    w = rng.uniform(0.5, 2, 50)
    beta = np.array([0.1, -0.3, 0.2])
    out = rounds.glm_binomial(y, X, beta, w)
    mu = 1 / (1 + np.exp(-X @ beta))
    assert out["loglik"] == pytest.approx(np.sum(w * (y * np.log(mu) + (1 - y) * np.log(1 - mu))), rel=1e-12)
    np.testing.assert_allclose(out["gradient"], X.T @ (w * (y - mu)), rtol=1e-12)
    gauss = rounds.glm_gaussian(y, X, w)
    np.testing.assert_allclose(gauss["xtx"], X.T @ np.diag(w) @ X, rtol=1e-12)
    assert gauss["sw"] == pytest.approx(w.sum()) and gauss["yty"] == pytest.approx(np.sum(w * y * y))
    with pytest.raises(ValueError, match="0 or 1"):
        rounds.glm_binomial(y * 2, X, beta)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        rounds.glm_gaussian(y, X, -w)


def test_habitat_weight_is_the_planar_gaussian_probability():
    d = np.array([-3.0, 0.0, 2.0, 5.0])
    np.testing.assert_allclose(rounds.habitat_weight(d, 2.0),
                               [0.5 * (1 + math.erf(x / 2.0 / math.sqrt(2))) for x in d], rtol=1e-12)
    assert rounds.habitat_weight(d, 0.0).tolist() == [0.0, 0.5, 1.0, 1.0]
    # Monte Carlo of the stated model: 3-D Gaussian error, planar border at distance 2 mm, sigma 3 mm
    rng = np.random.default_rng(0)
    points = rng.normal(0, 3.0, size=(200_000, 3))
    assert np.mean(points[:, 0] < 2.0) == pytest.approx(float(rounds.habitat_weight([2.0], 3.0)[0]), abs=0.005)
    with pytest.raises(ValueError, match="registration_error_mm"):
        rounds.habitat_weight(d, -1.0)


def test_posterior_and_table_validation():
    with pytest.raises(ValueError, match="prior must be a probability"):
        rounds.posterior_progression([1], [0], 0.8, 0.9, 0.7, 0.9, 1.5)
    with pytest.raises(ValueError, match="impossible"):
        rounds.posterior_progression([1], [1], 1.0, 1.0, 0.0, 1.0, 0.5)
    out = rounds.concordance_table([1, 1, 0, 0, 1], [1, 0, 1, 0, 1], [0.9, 0.5, 0.5, 0.1, 0.8])
    assert out["table"] == [[2, 1], [1, 1]]
    assert (out["likely_progression"], out["indeterminate"], out["likely_response"]) == (2, 2, 1)
    with pytest.raises(ValueError, match="band"):
        rounds.concordance_table([1], [1], [0.5], band=(0.8, 0.2))


def test_cox_survival_curve():
    times, surv = rounds.cox_survival([1, 2, 3], [0.1, 0.3, 0.6], [0.5, -1.0], [2.0, 1.0])
    np.testing.assert_allclose(surv, np.exp(-np.array([0.1, 0.3, 0.6]) * math.exp(0.0)))
    with pytest.raises(ValueError, match="non-decreasing"):
        rounds.cox_survival([1, 2], [0.5, 0.1], [1.0], [1.0])
