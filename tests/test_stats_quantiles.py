"""Federated quantiles by bisection on counts = numpy on the pooled data, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coordinator.stats import StatsError, run_analysis
from cdm.analyses.quantile import key_value, ordered_key
from test_stats_sites import network, split_uneven


def quantile(frames, probs, max_rounds=40, **options):
    ask, sites = network(frames, **options)
    return run_analysis({"type": "quantile", "variable": "x", "probs": probs, "max_rounds": max_rounds}, ask), sites


def test_ordered_key_preserves_order_and_round_trips():
    values = [-np.inf, -1e308, -2.5, -5e-324, -0.0, 5e-324, 1e-300, 1.0, 1.0000000000000002, 3e300, np.inf]
    keys = [ordered_key(v) for v in values]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) - 0  # -0.0 and 0.0 share a key; 0.0 absent here
    assert all(key_value(k) == v for k, v in zip(keys, values))
    assert ordered_key(1.0000000000000002) - ordered_key(1.0) == 1


@pytest.mark.parametrize("k,seed", [(3, 0), (10, 1)])
def test_median_and_quantiles_are_exactly_numpys(k, seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.lognormal(3, 1.2, 2001 + seed), 3)  # ties and an odd/even mix across probs
    frames = split_uneven(pd.DataFrame({"x": x}), k, seed=seed)
    probs = [0.5, 0.1, 0.25, 0.9, 0.0, 1.0]
    result, _ = quantile(frames, probs)
    assert result["n"] == len(x)
    for row, p in zip(result["quantiles"], probs):
        assert row["exact"] and row["value"] == np.quantile(x, p)
    assert result["rounds"] <= 9  # 12 order statistics share 200 thresholds; short decimals close brackets early


def test_even_count_median_interpolates_between_the_two_middle_values():
    x = np.array([-3.0, 1e-9, 2.0, 7.25, 1e12, -1e-300])
    result, _ = quantile(split_uneven(pd.DataFrame({"x": x}), 3), [0.5])
    assert result["quantiles"][0]["value"] == np.median(x) and result["quantiles"][0]["order_statistics"] == [3, 4]


def test_suppressed_counts_are_ignored_and_the_answer_stays_exact():
    rng = np.random.default_rng(3)
    x = rng.normal(50, 10, 600)
    frames = [pd.DataFrame({"x": part}) for part in np.split(x, [100, 250, 420])]  # sites of 100..180 values
    result, sites = quantile(frames, [0.5], min_count=11)
    assert result["quantiles"][0]["value"] == np.median(x)
    assert any(None in s.answer(a)["n_le"] for s in sites for a in list(s.asked))  # the policy really suppressed some


def test_suppression_that_blocks_bisection_gives_a_bracket_and_stops():
    rng = np.random.default_rng(4)
    x = rng.normal(50, 10, 300)
    frames = [pd.DataFrame({"x": x[:285]}), pd.DataFrame({"x": x[285:]})]  # 15 values: only 0 or 15 released
    result, _ = quantile(frames, [0.5], min_count=11)
    row = result["quantiles"][0]
    assert not row["exact"] and "suppressed" in row["note"] and result["rounds"] < 40
    assert row["lower_bound"] < np.median(x) <= row["upper_bound"]


def test_round_bound_gives_a_bracket_not_a_guess():
    x = np.linspace(0, 1, 101)
    result, _ = quantile(split_uneven(pd.DataFrame({"x": x}), 3), [0.5], max_rounds=2)
    row = result["quantiles"][0]
    assert not row["exact"] and row["value"] is None and result["rounds"] == 2
    assert row["lower_bound"] < np.median(x) <= row["upper_bound"]


def test_no_values_is_an_error():
    with pytest.raises(StatsError, match="no values"):
        quantile([pd.DataFrame({"x": [np.nan]}), pd.DataFrame({"x": [np.nan]})], [0.5])
