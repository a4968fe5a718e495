"""Pooled correlation = numpy; crosstab chi-square = scipy; concordance kappa = statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_rossi
from scipy.stats import chi2_contingency
from statsmodels.stats.inter_rater import cohens_kappa

from cdm.rounds import posterior_progression
from coordinator import aggregate
from coordinator.stats.text import render as stats_text
from coordinator.stats import run_analysis
from cdm.analyses.concordance import cohens_kappa as pooled_kappa
from test_stats_sites import network, split_uneven


@pytest.mark.parametrize("k", [3, 8])
def test_correlation_equals_numpy(k):
    df = load_rossi()
    variables = ["age", "prio", "week", "fin"]
    ask, _ = network(split_uneven(df, k, seed=k))
    result = run_analysis({"type": "correlation", "variables": variables}, ask)
    x = df[variables].to_numpy(float)
    np.testing.assert_allclose(result["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result["covariance"], np.cov(x, rowvar=False), rtol=1e-9)
    np.testing.assert_allclose(result["correlation"], np.corrcoef(x, rowvar=False), rtol=1e-9)
    assert result["n"] == len(df) and result["rounds"] == 1


def test_constant_variable_has_no_correlation_rather_than_nan():
    df = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [5.0] * 4})
    ask, _ = network([df.iloc[:1], df.iloc[1:]])
    result = run_analysis({"type": "correlation", "variables": ["a", "b"]}, ask)
    assert result["correlation"][0][1] is None and result["correlation"][0][0] == 1.0


def crosstab_results(df, k):
    results = {}
    for i, part in enumerate(split_uneven(df, k, seed=k)):
        counts = part.groupby(["a", "b"]).size()
        results[f"site-{i}"] = {"cells": [{"key": list(key), "n": int(n)} for key, n in counts.items()]}
    return results


def test_crosstab_chi_square_equals_scipy():
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.choice(["x", "y", "z"], 500), "b": rng.choice(["p", "q"], 500, p=[0.3, 0.7])})
    df.loc[df.a == "z", "b"] = rng.choice(["p", "q"], int((df.a == "z").sum()), p=[0.6, 0.4])
    pooled = aggregate.pool({"type": "crosstab", "by": ["a", "b"]}, crosstab_results(df, 4))
    ref = chi2_contingency(pd.crosstab(df.a, df.b).to_numpy(), correction=False)
    assert pooled["chi_square"]["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert pooled["chi_square"]["p"] == pytest.approx(ref.pvalue, rel=1e-9) and pooled["chi_square"]["df"] == 2


def test_chi_square_is_not_computed_on_lower_bounds():
    results = {"s1": {"cells": [{"key": ["x", "p"], "n": 12}, {"key": ["x", "q"], "n": None},
                                {"key": ["y", "p"], "n": 20}, {"key": ["y", "q"], "n": 30}]}}
    pooled = aggregate.pool({"type": "crosstab", "by": ["a", "b"]}, results)
    assert pooled["chi_square"]["statistic"] is None and "s1" in pooled["chi_square"]["note"]
    one_way = aggregate.pool({"type": "crosstab", "by": ["a"]}, {"s1": {"cells": [{"key": ["x"], "n": 3}]}})
    assert one_way["chi_square"] is None


def test_posterior_progression_by_hand():
    # prior 0.3, imaging sens .8 spec .9, ctDNA sens .7 spec .95: both positive
    post = posterior_progression([1, 0], [1, 0], 0.8, 0.9, 0.7, 0.95, 0.3)
    both = 0.3 * 0.8 * 0.7 / (0.3 * 0.8 * 0.7 + 0.7 * 0.1 * 0.05)
    neither = 0.3 * 0.2 * 0.3 / (0.3 * 0.2 * 0.3 + 0.7 * 0.9 * 0.95)
    np.testing.assert_allclose(post, [both, neither], rtol=1e-12)


@pytest.mark.parametrize("k", [3, 9])
def test_pooled_concordance_table_kappa_and_bands(k):
    rng = np.random.default_rng(k)
    truth = rng.uniform(size=900) < 0.35
    imaging = np.where(truth, rng.uniform(size=900) < 0.8, rng.uniform(size=900) < 0.15).astype(int)
    ctdna = np.where(truth, rng.uniform(size=900) < 0.7, rng.uniform(size=900) < 0.05).astype(int)
    df = pd.DataFrame({"img": imaging, "dna": ctdna})
    ask, _ = network(split_uneven(df, k, seed=k))
    analysis = {"type": "concordance", "imaging": "img", "ctdna": "dna", "imaging_sens": 0.8, "imaging_spec": 0.85,
                "ctdna_sens": 0.7, "ctdna_spec": 0.95, "prior": 0.35, "band": [0.2, 0.8]}
    result = run_analysis(analysis, ask)
    table = pd.crosstab(-df.img, -df.dna).to_numpy()  # rows/cols: progression yes first
    assert result["table"]["cells"] == table.tolist() and result["n"] == len(df)
    ref = cohens_kappa(table)
    assert result["agreement"]["kappa"] == pytest.approx(ref.kappa, rel=1e-12)
    assert result["agreement"]["se"] == pytest.approx(ref.std_kappa, rel=1e-9)
    assert result["agreement"]["se_null"] == pytest.approx(ref.std_kappa0, rel=1e-9)
    post = posterior_progression(df.img, df.dna, 0.8, 0.85, 0.7, 0.95, 0.35)
    assert result["bands"] == {"likely_progression": int((post >= 0.8).sum()), "likely_response": int((post <= 0.2).sum()),
                               "indeterminate": int(((post > 0.2) & (post < 0.8)).sum())}


def test_kappa_by_hand():
    # 2x2: 20 both yes, 5 / 10 disagreements, 15 both no: p_o = 35/50, p_e = (25*30 + 25*20)/2500
    k = pooled_kappa([[20, 5], [10, 15]])
    assert k["kappa"] == pytest.approx((0.7 - 0.5) / 0.5)


def test_suppressed_concordance_cells_give_lower_bounds_and_no_kappa():
    def ask(analysis):
        return [{"n": 40, "table": [[12, None], [9, 15]], "likely_progression": 12, "indeterminate": None,
                 "likely_response": 15, "_site": "a"},
                {"n": 30, "table": [[10, 5], [5, 10]], "likely_progression": 10, "indeterminate": 10,
                 "likely_response": 10, "_site": "b"}]

    analysis = {"type": "concordance", "imaging": "i", "ctdna": "c", "imaging_sens": 0.8, "imaging_spec": 0.9,
                "ctdna_sens": 0.7, "ctdna_spec": 0.9, "prior": 0.3}
    result = run_analysis(analysis, ask)
    assert result["table"]["cells"] == [[22, 5], [14, 25]] and not result["complete"]
    assert result["agreement"]["kappa"] is None and result["suppressed_at"] == ["a"]
    assert result["bands"]["indeterminate"] == 10
    assert result["table"]["cells_complete"] == [[True, False], [True, True]]
    assert result["bands_complete"] == {"likely_progression": True, "indeterminate": False, "likely_response": True}
    text = stats_text(result)
    assert ">=5*" in text and ">=10*" in text and "suppressed at a" in text  # lower bounds, marked
    assert " 22 " in f" {text} " and "Cohen's kappa not computed" in text
