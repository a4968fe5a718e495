"""Multi-round analyses through the real service: nats-server, coordinator, three node processes.

Each site's SQLite CDM holds persons with an index condition, an observation period and deaths in
groups of five on shared days (so the sites' disclosure policy releases every bin and tie group).
The pooled results must equal lifelines / numpy on the same persons, computed here from the rows
the fill function wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter

from cdm.rounds import bin_time
from federation import network_fixture
from survival_sites import CODE, COHORT, write_persons

pytestmark = pytest.mark.slow  # starts nats-server, the coordinator and three nodes (~10-20 s)

BIN = Path(sys.executable).parent
SITES = {"site-a": 30, "site-b": 45, "site-c": 60}
BASE = {"site-a": 1_000, "site-b": 2_000, "site-c": 3_000}
INDEX = dt.date(2015, 3, 1)
END = dt.date(2020, 12, 31)
TIME = {"event": {"kind": "death"}}


def persons(site: str) -> pd.DataFrame:
    """The rows fill() writes, with the survival time and age the node should derive from them."""
    rows = []
    for k in range(SITES[site]):
        pid = BASE[site] + k
        yob = 1940 + (pid * 7) % 40
        group = k // 5  # deaths come in groups of five on one day; odd groups are censored at END
        dies = group % 2 == 0
        time = 100 * (group + 1) + (7 if site == "site-b" else 0) if dies else (END - INDEX).days
        rows.append({"person_id": pid, "yob": yob, "age": 2015 - yob - 1, "time": float(time), "event": int(dies),
                     "site": site})
    return pd.DataFrame(rows)


def fill(engine, site: str) -> None:
    write_persons(engine, persons(site), CODE, INDEX, END)


network = network_fixture("e2e-stats", SITES, fill)


@pytest.fixture(scope="module")
def pooled():
    return pd.concat([persons(s) for s in SITES], ignore_index=True)


def spec(analysis: dict, variables: dict | None = None) -> dict:
    return {"cohort": COHORT, "variables": variables or {"age": {"kind": "age"}}, "analysis": analysis}


def test_stratified_cox_through_the_service(network, pooled):
    # plain mode: the within-site concordance below needs each site's own pair counts (secure mode: none)
    job = network.run({**spec({"type": "cox", "time": TIME, "covariates": ["age"], "mode": "stratified"}),
                       "federation": {"secure": False}})
    assert job["status"] == "done", job["message"]
    result = job["pooled"]
    assert result["aggregation"] == "plain" and job["provenance"]["mode"]["reason"] == "the spec asks for plain mode"
    ref = CoxPHFitter().fit(pooled[["time", "event", "age", "site"]], "time", "event", strata=["site"])
    assert result["coefficients"][0]["coef"] == pytest.approx(ref.params_["age"], rel=1e-6)
    assert result["coefficients"][0]["se"] == pytest.approx(ref.standard_errors_["age"], rel=1e-6)
    assert result["loglik"] == pytest.approx(ref.log_likelihood_, rel=1e-6)
    assert len(job["provenance"]["rounds"]) == result["rounds"] == result["convergence"]["iterations"] + 1
    # Harrell's C over within-site pairs, from the pair counts each node adds to its last round
    from lifelines.utils.concordance import _concordance_summary_statistics

    beta = result["coefficients"][0]["coef"]
    counts = [_concordance_summary_statistics(part.time.to_numpy(float), -beta * part.age.to_numpy(float),
                                              part.event.to_numpy(bool)) for _, part in pooled.groupby("site")]
    expected = sum(c + t / 2 for c, t, _ in counts) / sum(n for _, _, n in counts)
    assert result["concordance"] == pytest.approx(expected, rel=1e-12) and "within-site" in result["concordance_note"]


def test_km_through_the_cli_with_plots(network, pooled, tmp_path):
    path = tmp_path / "km.json"
    path.write_text(json.dumps(spec({"type": "km", "time": TIME, "bin_days": 50})))
    run = subprocess.run([str(BIN / "radfed"), "query", "run", str(path), "--plots", str(tmp_path / "plots")],
                         capture_output=True, text=True, env=network.env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Kaplan-Meier" in run.stdout and len(list((tmp_path / "plots").glob("km-*.png"))) == 1
    job = network.run(spec({"type": "km", "time": TIME, "bin_days": 50}))
    curve = job["pooled"]["groups"]["all"]
    ref = KaplanMeierFitter().fit(bin_time(pooled.time, 50), pooled.event)
    np.testing.assert_allclose(curve["survival"], ref.survival_function_.loc[curve["times"]].to_numpy().ravel())
    assert curve["n"] == len(pooled)


def test_pooled_cox_published_and_forecast_at_a_site(network, pooled, tmp_path):
    job = network.run(spec({"type": "cox", "time": TIME, "covariates": ["age"], "mode": "pooled", "ties": "efron"}))
    assert job["status"] == "done", job["message"]
    ref = CoxPHFitter().fit(pooled[["time", "event", "age"]], "time", "event")
    assert job["pooled"]["coefficients"][0]["coef"] == pytest.approx(ref.params_["age"], rel=1e-6)
    model = tmp_path / "model.json"
    run = subprocess.run([str(BIN / "radfed"), "result", job["job_id"], "--model-out", str(model)],
                         capture_output=True, text=True, env=network.env(), timeout=120)
    assert run.returncode == 0, run.stderr
    person = pooled.iloc[40]  # a site-b person
    run = subprocess.run([str(BIN / "radfed-node"), "--config", str(network.bundles["site-b"].node_toml), "--db",
                          str(network.dbs["site-b"]), "forecast", "--person", str(int(person.person_id)), "--model",
                          str(model), "--at", INDEX.isoformat(), "--horizon", "307", "--horizon", "450", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    forecast = json.loads(run.stdout)
    assert forecast["covariates"] == {"age": person.age}
    # 307 is an event time; lifelines interpolates between event times, the published step function
    # stays at its value until the next event (500), so day 450 reads the same as day 307
    expected = ref.predict_survival_function(pd.DataFrame({"age": [person.age]}), times=[307.0]).to_numpy().ravel()[0]
    assert [h["survival"] for h in forecast["horizons"]] == pytest.approx([expected, expected], rel=1e-6)


def test_a_refusing_site_keeps_its_code_in_a_multi_round_job(network):
    # no site holds a located biopsy, so each refuses the habitat round under its min-rows rule
    job = network.run(spec({"type": "habitat", "gene": "EGFR", "habitats": ["a", "b"]}))
    assert job["status"] == "failed" and "MIN_ROWS" in job["message"]
    per_site = {s["site"]: s for s in job["per_site"]}
    assert set(per_site) == set(SITES)
    for row in per_site.values():
        assert row["status"] == "refused" and row["code"] == "MIN_ROWS", row
        assert "biopsies" in row["message"] and row["elapsed_ms"] > 0


def test_summary_histogram_and_crosstab_through_the_service(network, pooled):
    """One-round analyses through real nodes = numpy / scipy on the pooled persons of three sites."""
    from scipy.stats import chi2_contingency

    job = network.run(spec({"type": "summary", "variables": ["age"]}))
    assert job["status"] == "done", job["message"]
    (row,) = job["pooled"]["rows"]
    assert row["pooled"]["complete"] and row["pooled"]["n"] == len(pooled)
    assert row["pooled"]["mean"] == pytest.approx(pooled.age.mean(), rel=1e-12)
    assert row["pooled"]["variance"] == pytest.approx(pooled.age.var(ddof=1), rel=1e-9)

    edges = [0, 50, 60, 120]
    job = network.run(spec({"type": "histogram", "variable": "age", "edges": edges}))
    assert job["status"] == "done", job["message"]
    counts = {r["key"][0]: r["pooled"]["n"] for r in job["pooled"]["rows"]}
    expected, _ = np.histogram(pooled.age, bins=edges)
    assert [counts[f"[{a}, {b})"] for a, b in zip(edges, edges[1:])] == expected.tolist()
    inner = [r for r in job["pooled"]["rows"] if r["key"][0] not in ("below", "above")]
    assert len(inner) == 3 and all(r["pooled"]["complete"] for r in inner)
    # nobody is below 0 or above 120: those empty cells read like small ones (issue 16), never as 0
    assert all(r["pooled"]["n"] is None for r in job["pooled"]["rows"] if r not in inner)

    job = network.run(spec({"type": "crosstab", "by": ["age", "site"], "bins": {"age": edges}},
                           {"age": {"kind": "age"}, "site": {"kind": "site"}}))
    assert job["status"] == "done", (job["message"], job.get("per_site"))
    table = pd.crosstab(pd.cut(pooled.age, edges, right=False), pooled.site).to_numpy()
    test = job["pooled"]["chi_square"]
    ref = chi2_contingency(table, correction=False)
    assert test["statistic"] == pytest.approx(ref.statistic, rel=1e-9) and test["df"] == ref.dof == 4
    assert sorted(r["pooled"]["n"] for r in job["pooled"]["rows"] if r["pooled"]["n"] is not None) == \
        sorted(table.ravel().tolist())
    assert "below, above" in test["note"] or "above, below" in test["note"]


def test_median_age_through_the_service(network, pooled):
    """Last in this module: the site-wide auditor holds every release of the network's sites, and
    the thresholds this releases would otherwise constrain the tables asked above.  Exact where the
    sites' counts allow it; here ages are spread thinly (about one person per year
    of age at each site), so closing the bracket would release a count that isolates fewer than
    min_cell_count persons between two thresholds (issue 16): the sites suppress those, and the
    result is a bracket around the pooled quantile that says why."""
    job = network.run(spec({"type": "quantile", "variable": "age", "probs": [0.5, 0.25]}))
    assert job["status"] == "done", job["message"]
    for q, truth in zip(job["pooled"]["quantiles"], [np.quantile(pooled.age, 0.5), np.quantile(pooled.age, 0.25)]):
        if q["exact"]:
            assert q["value"] == truth
        else:
            assert q["value"] is None and q["lower_bound"] < truth <= q["upper_bound"], q
            assert "suppressed" in q["note"]
