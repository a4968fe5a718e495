"""Federated logistic/linear regression and the habitat model = statsmodels on the pooled data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines.datasets import load_rossi

from cdm.rounds import habitat_weight
from coordinator.stats import StatsError, run_analysis
from test_stats_sites import network, split_uneven

REL = 1e-6


@pytest.fixture(scope="module")
def rossi():
    df = load_rossi()
    rng = np.random.default_rng(0)
    return df.assign(w=rng.uniform(0.2, 3.0, len(df)), score=df.prio * 0.7 + df.age * 0.1 + rng.normal(0, 1, len(df)))


def glm(frames, **analysis):
    ask, _ = network(frames)
    return run_analysis({"type": "glm", **analysis}, ask)


def column(result, key):
    return np.array([row[key] for row in result["coefficients"]])


@pytest.mark.parametrize("k,weights", [(3, None), (7, "w")])
def test_logistic_equals_statsmodels(rossi, k, weights):
    covariates = ["fin", "age", "prio", "wexp"]
    result = glm(split_uneven(rossi, k, seed=k), family="binomial", outcome="arrest", covariates=covariates,
                 weights=weights)
    X = sm.add_constant(rossi[covariates])
    ref = sm.GLM(rossi.arrest, X, family=sm.families.Binomial(),
                 freq_weights=rossi[weights] if weights else None).fit(tol=1e-12)
    np.testing.assert_allclose(column(result, "coef"), ref.params, rtol=REL)
    np.testing.assert_allclose(column(result, "se"), ref.bse, rtol=REL)
    np.testing.assert_allclose(column(result, "odds_ratio"), np.exp(ref.params), rtol=REL)
    assert result["loglik"] == pytest.approx(ref.llf, rel=REL)
    assert result["convergence"]["converged"] and result["rounds"] == result["convergence"]["iterations"] + 1


@pytest.mark.parametrize("weights", [None, "w"])
def test_linear_equals_ols_and_wls_in_one_round(rossi, weights):
    covariates = ["fin", "age", "prio"]
    result = glm(split_uneven(rossi, 6, seed=1), family="gaussian", outcome="score", covariates=covariates,
                 weights=weights)
    X = sm.add_constant(rossi[covariates])
    ref = (sm.WLS(rossi.score, X, weights=rossi[weights]) if weights else sm.OLS(rossi.score, X)).fit()
    np.testing.assert_allclose(column(result, "coef"), ref.params, rtol=1e-9)
    np.testing.assert_allclose(column(result, "se"), ref.bse, rtol=1e-9)
    np.testing.assert_allclose(column(result, "p"), ref.pvalues, rtol=1e-6)
    np.testing.assert_allclose(column(result, "coef_lower_95"), ref.conf_int()[0], rtol=1e-9)
    assert result["r_squared"] == pytest.approx(ref.rsquared, rel=1e-9)
    assert result["rounds"] == 1


def test_separation_is_reported_not_hidden():
    df = pd.DataFrame({"y": [0, 0, 0, 1, 1, 1] * 3, "x": [1.0, 2, 3, 4, 5, 6] * 3})
    result = glm(split_uneven(df, 3), family="binomial", outcome="y", covariates=["x"], max_iter=8)
    report = result["convergence"]
    # intercept = -3.5 x slope on this design, so it crosses the divergence bound first
    assert not report["converged"] and report["diverging"] == [0]
    assert "separation" in report["message"] and report["iterations"] < 8


def test_constant_covariate_is_a_clear_error():
    df = pd.DataFrame({"y": np.r_[np.zeros(10), np.ones(10)], "x": np.ones(20)})
    with pytest.raises(StatsError, match="singular"):
        glm(split_uneven(df, 2), family="gaussian", outcome="y", covariates=["x"])


def biopsies(n, seed):
    """Biopsies with a planted habitat effect: variant odds x4 in 'enhancing' vs 'necrotic'."""
    rng = np.random.default_rng(seed)
    habitat = rng.choice(["necrotic", "enhancing", "oedema"], n)
    logit = -1.0 + np.where(habitat == "enhancing", np.log(4.0), 0.0) + np.where(habitat == "oedema", 0.5, 0.0)
    return pd.DataFrame({"habitat": habitat, "outcome": (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int),
                         "distance_mm": rng.normal(4, 3, n), "sigma_mm": rng.uniform(1, 4, n)})


@pytest.mark.parametrize("k", [3, 10])
def test_habitat_model_equals_weighted_statsmodels_and_recovers_the_planted_effect(k):
    df = biopsies(3000, seed=k)
    ask, _ = network(split_uneven(df, k, seed=k))
    habitats = ["necrotic", "enhancing", "oedema"]
    result = run_analysis({"type": "habitat", "gene": "TP53", "habitats": habitats}, ask)
    X = np.column_stack([np.ones(len(df))] + [(df.habitat == h).to_numpy(float) for h in habitats[1:]])
    w = habitat_weight(df.distance_mm, df.sigma_mm)
    ref = sm.GLM(df.outcome, X, family=sm.families.Binomial(), freq_weights=w).fit(tol=1e-12)
    np.testing.assert_allclose(column(result, "coef"), ref.params, rtol=REL)
    np.testing.assert_allclose(column(result, "se"), ref.bse, rtol=REL)
    enhancing = result["coefficients"][1]
    assert enhancing["covariate"] == "habitat[enhancing]"
    assert enhancing["odds_ratio_lower_95"] < 4.0 < enhancing["odds_ratio_upper_95"]
    assert enhancing["odds_ratio_lower_95"] > 1.5  # the effect is detected, not just covered
