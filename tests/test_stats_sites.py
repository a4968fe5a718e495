"""Simulated sites for the federated-statistics tests, and tests of the round bookkeeping.

A :class:`LocalSite` holds one site's rows (a pandas frame) and answers node analyses exactly as a
node does after compiling its cohort: by calling the :mod:`cdm.rounds` kernels on its own arrays.
Results go through a JSON round trip, as on the bus.  :func:`network` gives the ``ask`` callable the
coordinator's algorithms use.  Nothing is mocked: every number a test compares comes from the
kernels on the site's share of a real data set, pooled by the real coordinator code.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cdm import rounds
from coordinator.stats import StatsError, run_analysis
from cdm.analyses.session import Session


def split_uneven(df: pd.DataFrame, k: int, seed: int = 0, by: str | None = None) -> list[pd.DataFrame]:
    """Split rows (or groups of rows sharing ``by``) across ``k`` sites with very unequal shares."""
    rng = np.random.default_rng(seed)
    units = df[by].unique() if by else np.arange(len(df))
    shares = rng.dirichlet(np.full(k, 0.7))
    shares = 0.1 / k + 0.9 * shares  # every site gets something
    site_of = rng.choice(k, size=len(units), p=shares / shares.sum())
    for i in range(k):  # and at least a few units
        if not np.any(site_of == i):
            site_of[i] = i
    assign = dict(zip(units, site_of))
    key = df[by].map(assign) if by else pd.Series(site_of, index=df.index)
    return [df[key.values == i].reset_index(drop=True) for i in range(k)]


class LocalSite:
    """One site's answer to each node round type, from its own rows via :mod:`cdm.rounds`."""

    def __init__(self, name: str, frame: pd.DataFrame, min_count: int = 0, release_concordance: bool = False,
                 time_col: str = "time", event_col: str = "event"):
        self.name, self.frame, self.min_count = name, frame, min_count
        self.release_concordance = release_concordance
        self.time_col, self.event_col = time_col, event_col
        self.asked: list[dict] = []

    def answer(self, analysis: dict) -> dict:
        self.asked.append(analysis)
        kind = analysis["type"]
        f = self.frame
        if kind == "km_round":
            group = f[analysis["group"]].to_numpy() if analysis.get("group") else None
            return rounds.km_counts(f[self.time_col], f[self.event_col], analysis["bin_days"], group)
        if kind == "cox_round":
            X = f[analysis["covariates"]].to_numpy(float)
            if analysis.get("time_varying"):
                start, stop = f["start"].to_numpy(float), f["stop"].to_numpy(float)
            else:
                start, stop = None, f[self.time_col].to_numpy(float)
            event = f[self.event_col].to_numpy()
            if analysis["mode"] == "stratified":
                out = rounds.cox_stratified(start, stop, event, X, analysis["beta"], analysis["ties"])
            else:
                out = rounds.cox_risk_sums(start, stop, event, X, analysis["beta"], analysis["ties"])
            if self.release_concordance:
                out["concordance"] = rounds.concordance_counts(stop, event, X @ np.asarray(analysis["beta"]))
            return out
        if kind == "glm_round":
            cols = [analysis["outcome"]] + analysis["covariates"] + ([analysis["weights"]] if analysis.get("weights") else [])
            rows = f[cols].dropna()
            X = np.column_stack([np.ones(len(rows)), rows[analysis["covariates"]].to_numpy(float)])
            w = rows[analysis["weights"]].to_numpy(float) if analysis.get("weights") else None
            y = rows[analysis["outcome"]].to_numpy(float)
            if analysis["family"] == "gaussian":
                return rounds.glm_gaussian(y, X, w)
            return rounds.glm_binomial(y, X, analysis["beta"], w)
        if kind == "habitat_round":
            habitats = analysis["habitats"]
            rows = f[f["habitat"].isin(habitats)]
            X = np.column_stack([np.ones(len(rows))] + [(rows["habitat"] == h).to_numpy(float) for h in habitats[1:]])
            w = rounds.habitat_weight(rows["distance_mm"], rows["sigma_mm"])
            return rounds.glm_binomial(rows["outcome"].to_numpy(float), X, analysis["beta"], w)
        if kind == "crossprod":
            x = f[analysis["variables"]].dropna().to_numpy(float)
            return {"n": len(x), "sums": x.sum(axis=0).tolist(), "cross": (x.T @ x).tolist()}
        if kind == "quantile_round":
            x = np.sort(f[analysis["variable"]].dropna().to_numpy(float))
            counts = np.searchsorted(x, analysis["thresholds"], side="right")
            small = lambda c: 0 < c < self.min_count or 0 < len(x) - c < self.min_count  # noqa: E731
            return {"n": len(x), "n_le": [None if small(c) else int(c) for c in counts]}
        if kind == "concordance":
            imaging, ctdna = f[analysis["imaging"]].to_numpy(), f[analysis["ctdna"]].to_numpy()
            post = rounds.posterior_progression(imaging, ctdna, analysis["imaging_sens"], analysis["imaging_spec"],
                                                analysis["ctdna_sens"], analysis["ctdna_spec"], analysis["prior"])
            return rounds.concordance_table(imaging, ctdna, post, tuple(analysis["band"]))
        raise AssertionError(f"site cannot answer {kind}")


def network(frames, **site_options):
    """``(ask, sites)``: ``ask(analysis)`` answers from every site, results JSON round-tripped."""
    sites = [LocalSite(f"site-{i}", frame, **site_options) for i, frame in enumerate(frames)]

    def ask(analysis: dict) -> list[dict]:
        analysis = json.loads(json.dumps(analysis))  # what a node receives
        return [{**json.loads(json.dumps(s.answer(analysis))), "_site": s.name} for s in sites]

    return ask, sites


# -- the bookkeeping itself ---------------------------------------------------------------------------


def test_session_fixes_the_site_set_and_counts_rounds():
    replies = [[{"n": 1, "_site": "a"}, {"n": 2, "_site": "b"}], [{"n": 1, "_site": "a"}, {"n": 2, "_site": "b"},
                                                                  {"n": 5, "_site": "late"}]]
    session = Session(lambda analysis: replies.pop(0))
    assert set(session.round({"type": "count"})) == {"a", "b"}
    assert set(session.round({"type": "count"})) == {"a", "b"}  # a site joining later is ignored
    assert session.rounds == 2 and session.sites == ["a", "b"]


def test_a_site_lost_mid_analysis_stops_it():
    frames = split_uneven(pd.DataFrame({"y": np.r_[np.zeros(20), np.ones(20)], "x": np.arange(40.0)}), 3, seed=1)
    ask, sites = network(frames)
    calls = []

    def flaky(analysis):
        calls.append(analysis)
        answers = ask(analysis)
        return answers if len(calls) == 1 else answers[1:]

    with pytest.raises(StatsError, match="site-0 answered an earlier round but not this one"):
        run_analysis({"type": "glm", "family": "binomial", "outcome": "y", "covariates": ["x"]}, flaky)


def test_bad_analyses_are_refused_with_the_field_named():
    ask, _ = network([pd.DataFrame({"x": [1.0]})])
    with pytest.raises(StatsError, match="unknown multi-round analysis"):
        run_analysis({"type": "cox_round"}, ask)
    with pytest.raises(StatsError, match="covariates"):
        run_analysis({"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": []}, ask)
    with pytest.raises(StatsError, match="ties"):
        run_analysis({"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": ["x"], "ties": "exact"}, ask)


def test_suppressed_model_sums_are_refused_not_treated_as_zero():
    def ask(analysis):
        return [{"n": 10, "loglik": None, "gradient": None, "hessian": None, "_site": "a"}]

    with pytest.raises(StatsError, match="a: glm_round result has no 'loglik'"):
        run_analysis({"type": "glm", "family": "binomial", "outcome": "y", "covariates": ["x"]}, ask)


def test_newton_reports_a_stalled_search_instead_of_accepting_a_worse_fit():
    import numpy as np

    from cdm.analyses.newton import maximise

    def evaluate(beta, lock=None):  # a "likelihood" whose Newton direction always points downhill
        return {"loglik": -float(beta @ beta), "gradient": -2 * beta, "hessian": 2 * np.eye(len(beta))}

    beta, fit, report = maximise(evaluate, np.array([1.0, -2.0]), max_halvings=3)
    assert not report["converged"] and "step-halvings" in report["message"]
    assert fit["loglik"] == -5.0 and beta.tolist() == [1.0, -2.0] and report["step_halvings"] == 3


def test_results_are_strict_json():
    import json

    df = pd.DataFrame({"time": [1.0, 2, 3, 4, 5, 6], "event": [1, 1, 1, 1, 1, 1], "g": [0, 0, 0, 1, 1, 1]})
    ask, _ = network([df.iloc[:3], df.iloc[3:]])
    result = run_analysis({"type": "km", "time": {"event": {"kind": "death"}}, "group": "g", "bin_days": 1}, ask)
    json.dumps(result, allow_nan=False)  # every curve reaches 0: its log-log interval is undefined, never NaN
    assert result["groups"]["0"]["survival"][-1] == 0.0
