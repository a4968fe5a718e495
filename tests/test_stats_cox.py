"""Federated Cox = lifelines / statsmodels on the pooled data (rossi, Stanford heart transplants).

The rossi recidivism data (432 persons, weekly times with many ties) is split very unevenly across
3 and 7 simulated sites; each site answers ``cox_round`` with the cdm.rounds kernels.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter
from lifelines.datasets import load_rossi, load_stanford_heart_transplants
from statsmodels.duration.hazard_regression import PHReg

from cdm import rounds
from coordinator.stats import StatsError, run_analysis
from cdm.analyses.cox import forecast_model
from test_stats_sites import network, split_uneven

REL = 1e-6
COVARIATES = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
TIME = {"event": {"kind": "death"}}


@pytest.fixture(scope="module")
def rossi():
    return load_rossi().rename(columns={"week": "time", "arrest": "event"})


def cox(frames, **options):
    ask, sites = network(frames, **{k: options.pop(k) for k in ("release_concordance",) if k in options})
    return run_analysis({"type": "cox", "time": TIME, "covariates": COVARIATES, **options}, ask), sites


def coefs(result, key="coef"):
    return np.array([row[key] for row in result["coefficients"]])


@pytest.mark.parametrize("k", [3, 7])
def test_pooled_efron_equals_lifelines(rossi, k):
    frames = split_uneven(rossi, k, seed=k)
    result, _ = cox(frames, ties="efron", mode="pooled")
    ref = CoxPHFitter().fit(rossi, "time", "event")
    np.testing.assert_allclose(coefs(result), ref.params_[COVARIATES], rtol=REL)
    np.testing.assert_allclose(coefs(result, "se"), ref.standard_errors_[COVARIATES], rtol=REL)
    np.testing.assert_allclose(coefs(result, "exp(coef)"), ref.hazard_ratios_[COVARIATES], rtol=REL)
    np.testing.assert_allclose(coefs(result, "p"), ref.summary["p"][COVARIATES], rtol=1e-5)
    np.testing.assert_allclose(coefs(result, "coef_lower_95"), ref.confidence_intervals_.iloc[:, 0][COVARIATES], rtol=REL)
    assert result["loglik"] == pytest.approx(ref.log_likelihood_, rel=REL)
    lr = ref.log_likelihood_ratio_test()
    assert result["likelihood_ratio_test"]["statistic"] == pytest.approx(lr.test_statistic, rel=REL)
    assert result["n"] == len(rossi) and result["events"] == int(rossi.event.sum())
    conv = result["convergence"]
    assert conv["converged"] and conv["gradient_norm"] < 1e-6 and result["rounds"] == conv["iterations"] + 1
    # lifelines' baseline is at the covariate means: H0_lifelines(t) = H0(t) exp(mean'beta)
    base = result["baseline"]
    shift = np.exp(rossi[COVARIATES].mean().to_numpy() @ coefs(result))
    expected = ref.baseline_cumulative_hazard_.loc[base["times"]].to_numpy().ravel()
    np.testing.assert_allclose(np.array(base["cumulative_hazard"]) * shift, expected, rtol=REL)
    assert result["concordance"] is None and "not computable" in result["concordance_note"]


@pytest.mark.parametrize("k", [3, 7])
def test_stratified_efron_equals_lifelines_strata(rossi, k):
    frames = split_uneven(rossi, k, seed=10 + k)
    result, _ = cox(frames, ties="efron", mode="stratified")
    pooled = pd.concat([f.assign(site=i) for i, f in enumerate(frames)], ignore_index=True)
    ref = CoxPHFitter().fit(pooled, "time", "event", strata=["site"])
    np.testing.assert_allclose(coefs(result), ref.params_[COVARIATES], rtol=REL)
    np.testing.assert_allclose(coefs(result, "se"), ref.standard_errors_[COVARIATES], rtol=REL)
    assert result["loglik"] == pytest.approx(ref.log_likelihood_, rel=REL)
    assert "baseline" not in result


@pytest.mark.parametrize("mode", ["pooled", "stratified"])
def test_breslow_equals_statsmodels_phreg(rossi, mode):
    frames = split_uneven(rossi, 5, seed=3)
    result, _ = cox(frames, ties="breslow", mode=mode)
    pooled = pd.concat([f.assign(site=i) for i, f in enumerate(frames)], ignore_index=True)
    strata = pooled["site"] if mode == "stratified" else None
    ref = PHReg(pooled["time"], pooled[COVARIATES], status=pooled["event"], ties="breslow", strata=strata).fit()
    np.testing.assert_allclose(coefs(result), ref.params, rtol=REL)
    np.testing.assert_allclose(coefs(result, "se"), ref.bse, rtol=REL)
    assert result["loglik"] == pytest.approx(ref.llf, rel=REL)


@pytest.mark.parametrize("mode", ["pooled", "stratified"])
def test_time_varying_equals_coxtimevaryingfitter(mode, tmp_path):
    df = load_stanford_heart_transplants()[["id", "start", "stop", "event", "age", "year", "surgery", "transplant"]]
    covariates = ["age", "year", "surgery", "transplant"]
    frames = split_uneven(df, 4, seed=2, by="id")  # a person's intervals stay at one site
    if mode == "stratified":
        sited = pd.concat([f.assign(site=i) for i, f in enumerate(frames)], ignore_index=True)
        ref = CoxTimeVaryingFitter().fit(sited, id_col="id", event_col="event", start_col="start", stop_col="stop",
                                         strata=["site"])
    else:
        ref = CoxTimeVaryingFitter().fit(df, id_col="id", event_col="event", start_col="start", stop_col="stop")
    ask, _ = network(frames)
    result = run_analysis({"type": "cox", "time": TIME, "covariates": covariates, "time_varying": True,
                           "ties": "efron", "mode": mode}, ask)
    np.testing.assert_allclose(coefs(result), ref.params_[covariates], rtol=REL)
    np.testing.assert_allclose(coefs(result, "se"), ref.standard_errors_[covariates], rtol=REL)
    np.testing.assert_allclose(coefs(result, "exp(coef)"), ref.hazard_ratios_[covariates], rtol=REL)
    np.testing.assert_allclose(coefs(result, "coef_upper_95"), ref.confidence_intervals_.iloc[:, 1][covariates], rtol=REL)
    np.testing.assert_allclose(coefs(result, "p"), ref.summary["p"][covariates], rtol=1e-5)
    assert result["loglik"] == pytest.approx(ref.log_likelihood_, rel=REL)
    assert result["n"] == len(df) and result["convergence"]["converged"]
    if mode == "pooled":
        # CoxTimeVaryingFitter's baseline is at the intervals' covariate means; ours at covariates = 0
        base = result["baseline"]
        shift = np.exp(df[covariates].mean().to_numpy() @ coefs(result))
        expected = ref.baseline_cumulative_hazard_.loc[base["times"]].to_numpy().ravel()
        np.testing.assert_allclose(np.array(base["cumulative_hazard"]) * shift, expected, rtol=REL)
        # and this is the model a site forecasts from: published with its time-varying definitions
        from cdm.published_model import load_model

        variables = {c: {"kind": "measurement", "code": f"RADFED:{c}", "time_varying": True} for c in covariates}
        document = forecast_model(result, {"variables": variables, "analysis": {"time": TIME}})
        path = tmp_path / "tv-model.json"
        path.write_text(json.dumps(document))
        model = load_model(path)
        assert model.fit["time_varying"] and model.variables["transplant"].time_varying
        x = df[covariates].iloc[0].to_numpy(float)
        times, survival = rounds.cox_survival(model.baseline.times, model.baseline.cumhaz, model.beta, x)
        lifelines_survival = np.exp(-expected * np.exp((x - df[covariates].mean().to_numpy()) @ ref.params_[covariates]))
        np.testing.assert_allclose(survival, lifelines_survival, rtol=1e-6)


def test_within_site_concordance_when_sites_release_pair_counts(rossi):
    frames = split_uneven(rossi, 3, seed=4)
    result, _ = cox(frames, ties="efron", mode="stratified", release_concordance=True)
    beta = coefs(result)
    from lifelines.utils.concordance import _concordance_summary_statistics

    counts = [_concordance_summary_statistics(f.time.to_numpy(float), -(f[COVARIATES].to_numpy(float) @ beta),
                                              f.event.to_numpy(bool)) for f in frames]
    expected = sum(c + t / 2 for c, t, _ in counts) / sum(p for _, _, p in counts)
    # the last round was at beta itself: the pair counts are those of the reported model
    assert result["concordance"] == pytest.approx(expected, rel=1e-12)
    assert "within-site" in result["concordance_note"]


def test_forecast_from_published_model_matches_lifelines(rossi, tmp_path):
    import json

    from cdm.published_model import load_model

    result, _ = cox(split_uneven(rossi, 3, seed=5), ties="efron", mode="pooled")
    spec = {"variables": {c: {"kind": "age"} for c in COVARIATES}, "analysis": {"type": "cox", "time": TIME}}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(forecast_model(result, spec)))
    model = load_model(path)  # the node's reader accepts the document
    ref = CoxPHFitter().fit(rossi, "time", "event")
    person = rossi.iloc[[7]]
    times, survival = rounds.cox_survival(model.baseline.times, model.baseline.cumhaz, model.beta,
                                          person[COVARIATES].to_numpy(float).ravel())
    expected = ref.predict_survival_function(person, times=times).to_numpy().ravel()
    np.testing.assert_allclose(survival, expected, rtol=1e-6)
    with pytest.raises(StatsError, match="does not define"):
        forecast_model(result, {"variables": {}})


def test_no_events_and_collinear_covariates_are_clear_errors(rossi):
    frames = split_uneven(rossi.assign(event=0), 3)
    with pytest.raises(StatsError, match="no events"):
        cox(frames, mode="pooled")
    frames = split_uneven(rossi.assign(prio=rossi.age * 2.0), 3)
    with pytest.raises(StatsError, match="singular"):
        cox(frames, mode="pooled")
