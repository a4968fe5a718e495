"""Federated Kaplan-Meier and log-rank = lifelines on the pooled data at the same time resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_rossi, load_waltons
from lifelines.statistics import logrank_test, multivariate_logrank_test

from cdm.rounds import bin_time
from coordinator.stats import run_analysis
from test_stats_sites import network, split_uneven

TIME = {"event": {"kind": "death"}}


def km(frames, group=None, bin_days=1):
    ask, _ = network(frames)
    return run_analysis({"type": "km", "time": TIME, "group": group, "bin_days": bin_days}, ask)


@pytest.mark.parametrize("k,bin_days", [(3, 1), (7, 4)])
def test_km_by_group_equals_lifelines_on_binned_times(k, bin_days):
    df = load_rossi().rename(columns={"week": "time", "arrest": "event"})
    result = km(split_uneven(df, k, seed=k), group="fin", bin_days=bin_days)
    binned = df.assign(time=bin_time(df.time, bin_days))
    assert sorted(result["groups"]) == ["0", "1"]
    for label, part in binned.groupby("fin"):
        ref = KaplanMeierFitter().fit(part.time, part.event)
        g = result["groups"][str(label)]
        expected = ref.survival_function_.loc[g["times"]].to_numpy().ravel()
        np.testing.assert_allclose(g["survival"], expected, rtol=1e-12)
        ci = ref.confidence_interval_survival_function_.loc[g["times"]].to_numpy()
        np.testing.assert_allclose(g["ci_lower_95"], ci[:, 0], rtol=1e-9)
        np.testing.assert_allclose(g["ci_upper_95"], ci[:, 1], rtol=1e-9)
        table = ref.event_table.loc[g["times"]]
        assert g["at_risk"] == table["at_risk"].tolist() and g["events"] == table["observed"].tolist()
        assert g["censored"] == table["censored"].tolist() and g["n"] == len(part)
        median = ref.median_survival_time_
        assert (g["median"] is None and np.isinf(median)) or g["median"] == median
    a, b = binned[binned.fin == 0], binned[binned.fin == 1]
    ref = logrank_test(a.time, b.time, a.event, b.event)
    assert result["logrank"]["statistic"] == pytest.approx(ref.test_statistic, rel=1e-9)
    assert result["logrank"]["p"] == pytest.approx(ref.p_value, rel=1e-9)
    assert result["rounds"] == 1


def test_logrank_over_three_groups_equals_multivariate_logrank():
    df = load_waltons().rename(columns={"T": "time", "E": "event"})
    df["grp"] = np.where(df.group == "control", "control", np.where(np.arange(len(df)) % 2, "mir-a", "mir-b"))
    result = km(split_uneven(df, 5, seed=9), group="grp", bin_days=3)
    binned = df.assign(time=bin_time(df.time, 3))
    ref = multivariate_logrank_test(binned.time, binned.grp, binned.event)
    assert result["logrank"]["df"] == 2
    assert result["logrank"]["statistic"] == pytest.approx(ref.test_statistic, rel=1e-9)


def test_ungrouped_curve_and_a_site_with_few_times():
    df = pd.DataFrame({"time": [5.0, 6, 6, 9, 12, 15, 15, 20, 30, 31], "event": [1, 0, 1, 1, 0, 1, 1, 0, 1, 0]})
    result = km([df.iloc[:2], df.iloc[2:9], df.iloc[9:]])  # one site holds only a late censoring
    ref = KaplanMeierFitter().fit(df.time, df.event)
    g = result["groups"]["all"]
    np.testing.assert_allclose(g["survival"], ref.survival_function_.loc[g["times"]].to_numpy().ravel())
    assert g["at_risk"][0] == 10 and result["logrank"] is None


def test_a_group_a_site_suppressed_is_named_not_zeroed():
    df = pd.DataFrame({"time": [5.0, 6, 6, 9, 12, 15, 15, 20], "event": [1, 0, 1, 1, 0, 1, 1, 0], "g": [0, 1] * 4})
    ask, _ = network([df])

    def with_suppression(analysis):
        answers = ask(analysis)
        return answers + [{"groups": {"0": None, "1": answers[0]["1"]}, "_site": "small"}]

    result = run_analysis({"type": "km", "time": TIME, "group": "g", "bin_days": 1}, with_suppression)
    assert result["groups"]["0"]["suppressed_at"] == ["small"] and not result["groups"]["0"]["complete"]
    assert result["groups"]["0"]["n"] == 4 and result["groups"]["1"]["n"] == 8 and result["groups"]["1"]["complete"]


def test_a_site_that_merged_bins_makes_the_pooled_curve_say_where_it_is_approximate():
    """Plain mode: a node coarsens its own small bins (cdm.analyses.km.coarsen_km); the pooled curve
    is then not exact from the first merged bin on, and the result says so per time point."""
    from coordinator.stats.text import render

    exact = {"times": [10, 20, 30, 40], "at_risk": [20, 18, 15, 9], "events": [2, 3, 5, 1], "censored": [0, 0, 1, 8]}
    merged = {"times": [20, 30, 40], "at_risk": [20, 15, 9], "events": [5, 5, 1], "censored": [0, 1, 8],
              "merged": [[10, 20]], "bin_days_effective": 20}

    def ask(analysis):
        return [{"groups": {"all": exact}, "_site": "a"}, {"groups": {"all": merged}, "_site": "b"}]

    result = run_analysis({"type": "km", "time": TIME, "bin_days": 10}, ask)
    curve = result["groups"]["all"]
    assert curve["times"] == [10, 20, 30, 40] and curve["coarsened"] == [True, True, True, True]
    assert curve["merged_by"] == ["b"] and "approximate" in result["coarsening"]
    assert "approximate from t = 10" in render(result)
    unmerged = run_analysis({"type": "km", "time": TIME, "bin_days": 10},
                            lambda a: [{"groups": {"all": exact}, "_site": "a"}])
    assert not any(unmerged["groups"]["all"]["coarsened"]) and "coarsening" not in unmerged
