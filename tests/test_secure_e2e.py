"""Secure aggregation through the real service (nats-server, coordinator, four node processes) under
the default policy (min_cell_count 5) on data with weekly times and small tie groups (issue 17).

Each site alone has many weeks with one or two deaths, so in plain mode pooled Cox is refused; in
secure mode the coordinator sees only sums over the sites, the thresholds apply to the pooled
numbers, and every pooled result equals lifelines / statsmodels / numpy on the pooled rows.  The
coordinator's store, log and API answers must hold no site's own value; a round with a chosen beta
is refused by every node; a site killed mid-analysis is dropped and the fit re-run without it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import re
import signal
import time

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from sqlalchemy import insert

from cdm import rounds, secagg, wire
from cdm.schema import metadata
from cdm.vocabulary import Vocabulary
from federation import network_fixture

pytestmark = pytest.mark.slow

SITES = {"site-a": 123, "site-b": 91, "site-c": 77, "site-d": 58}
INDEX = dt.date(2018, 1, 1)
COHORT = {"index": {"kind": "condition", "codes": ["SNOMED:443487006"]}}
TIME = {"event": {"kind": "death"}}
TIGHT = {"precision": 1e-12}  # lifelines' default stops at ~1e-6 relative; the federated fit goes to 1e-9
VARIABLES = {"age": {"kind": "age"},
             "arm": {"kind": "condition", "codes": {"A": "SNOMED:111111", "B": "SNOMED:222222"}},
             "armb": {"kind": "condition", "codes": ["SNOMED:222222"]},
             "creat": {"kind": "measurement", "code": "LOINC:2160-0", "time_varying": True}}


def persons(site: str) -> pd.DataFrame:
    rng = np.random.default_rng(sorted(SITES).index(site) + 17)
    n = SITES[site]
    age = rng.integers(35, 85, n)
    armb = rng.random(n) < 0.45
    weeks = rng.integers(1, 160, n)
    event = rng.random(n) < 1 / (1 + np.exp(-(-0.9 + 0.03 * (age - 60) + 0.6 * armb)))
    change = 7 * rng.integers(1, 120, n)
    creat = np.round(rng.normal(1.0, 0.2, n), 3)
    creat_late = np.round(creat + rng.normal(0.3, 0.2, n), 3)
    imaging = rng.random(n) < 0.35  # progression by imaging, and by ctDNA agreeing with it 70 % of the time
    ctdna = np.where(rng.random(n) < 0.7, imaging, rng.random(n) < 0.35)
    return pd.DataFrame({"person_id": 100_000 * (sorted(SITES).index(site) + 1) + np.arange(n), "age": age,
                         "armb": armb.astype(int), "time": 7.0 * weeks, "event": event.astype(int),
                         "change": change, "creat": creat, "creat_late": creat_late, "site": site,
                         "imaging": imaging.astype(int), "ctdna": ctdna.astype(int)})


def fill(engine, site: str) -> None:
    df = persons(site)
    vocab = Vocabulary(engine)
    index = vocab.concept_for("SNOMED", "443487006", "index", "Condition").concept_id
    arm = {0: vocab.concept_for("SNOMED", "111111", "arm A", "Condition").concept_id,
           1: vocab.concept_for("SNOMED", "222222", "arm B", "Condition").concept_id}
    creat = vocab.concept_for("LOINC", "2160-0", "creatinine", "Measurement").concept_id
    calls = {"imaging": vocab.concept_for("SNOMED", "333333", "progression by imaging", "Condition").concept_id,
             "ctdna": vocab.concept_for("SNOMED", "444444", "progression by ctDNA", "Condition").concept_id}
    T = metadata.tables
    with engine.begin() as conn:
        conn.execute(insert(T["person"]), [
            {"person_id": int(r.person_id), "gender_concept_id": 8507, "year_of_birth": 2017 - int(r.age),
             "month_of_birth": 6, "day_of_birth": 1, "race_concept_id": 0, "ethnicity_concept_id": 0}
            for r in df.itertuples()])
        conn.execute(insert(T["observation_period"]), [
            {"observation_period_id": int(r.person_id), "person_id": int(r.person_id),
             "observation_period_start_date": dt.date(2010, 1, 1),
             "observation_period_end_date": INDEX + dt.timedelta(days=int(r.time)), "period_type_concept_id": 32817}
            for r in df.itertuples()])
        conn.execute(insert(T["condition_occurrence"]), [
            {"condition_occurrence_id": 2 * int(r.person_id) + k, "person_id": int(r.person_id),
             "condition_concept_id": concept, "condition_start_date": INDEX, "condition_type_concept_id": 32817}
            for r in df.itertuples() for k, concept in enumerate((index, arm[int(r.armb)]))])
        conn.execute(insert(T["condition_occurrence"]), [
            {"condition_occurrence_id": 3_000_000_000 + 2 * int(r.person_id) + k, "person_id": int(r.person_id),
             "condition_concept_id": calls[call], "condition_start_date": INDEX, "condition_type_concept_id": 32817}
            for r in df.itertuples() for k, call in enumerate(("imaging", "ctdna")) if getattr(r, call)])
        conn.execute(insert(T["death"]), [
            {"person_id": int(r.person_id), "death_date": INDEX + dt.timedelta(days=int(r.time)),
             "death_type_concept_id": 32817} for r in df.itertuples() if r.event])
        conn.execute(insert(T["measurement"]), [
            {"measurement_id": 2 * int(r.person_id) + k, "person_id": int(r.person_id),
             "measurement_concept_id": creat, "measurement_date": INDEX + dt.timedelta(days=day),
             "measurement_type_concept_id": 0, "value_as_number": value}
            for r in df.itertuples() for k, (day, value) in enumerate(((0, r.creat), (int(r.change), r.creat_late)))])


def intervals(df: pd.DataFrame) -> pd.DataFrame:
    """Counting-process rows as the nodes build them (a change on or after the end is ignored)."""
    rows = []
    for r in df.itertuples():
        if r.change < r.time:
            rows.append({"id": r.person_id, "start": 0, "stop": r.change, "event": 0, "creat": r.creat, "age": r.age})
            rows.append({"id": r.person_id, "start": r.change, "stop": r.time, "event": r.event, "creat": r.creat_late,
                         "age": r.age})
        else:
            rows.append({"id": r.person_id, "start": 0, "stop": r.time, "event": r.event, "creat": r.creat, "age": r.age})
    return pd.DataFrame(rows)


network = network_fixture("e2e-secure", SITES, fill)


@pytest.fixture(scope="module")
def pooled():
    return pd.concat([persons(s) for s in SITES], ignore_index=True)


def spec(analysis: dict, **federation) -> dict:
    out = {"cohort": COHORT, "variables": VARIABLES, "analysis": analysis}
    return {**out, "federation": federation} if federation else out


def done(job: dict) -> dict:
    assert job["status"] == "done", job["message"]
    assert job["pooled"]["aggregation"] == "secure" and job["provenance"]["mode"]["mode"] == "secure"
    assert all(r["mode"] == "secure" for r in job["provenance"]["rounds"])
    return job["pooled"]


def test_the_data_defeats_plain_pooled_cox_under_the_default_policy(network):
    job = network.run(spec({"type": "cox", "time": TIME, "covariates": ["age", "armb"], "mode": "pooled"},
                           secure=False))
    assert job["status"] == "failed" and job["provenance"]["mode"]["mode"] == "plain"
    assert {s["code"] for s in job["per_site"]} == {"MIN_CELL"}


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_secure_pooled_cox_equals_the_pooled_reference(network, pooled, ties):
    result = done(network.run(spec({"type": "cox", "time": TIME, "covariates": ["age", "armb"], "mode": "pooled",
                                    "ties": ties})))
    coef = [row["coef"] for row in result["coefficients"]]
    se = [row["se"] for row in result["coefficients"]]
    if ties == "efron":
        ref = CoxPHFitter().fit(pooled[["time", "event", "age", "armb"]], "time", "event", fit_options=TIGHT)
        expected, expected_se, loglik = ref.params_.to_numpy(), ref.standard_errors_.to_numpy(), ref.log_likelihood_
    else:
        from statsmodels.duration.hazard_regression import PHReg

        fit = PHReg(pooled.time, pooled[["age", "armb"]].to_numpy(float), status=pooled.event, ties="breslow").fit()
        expected, expected_se, loglik = fit.params, fit.bse, fit.llf
    np.testing.assert_allclose(coef, expected, rtol=1e-6)
    np.testing.assert_allclose(se, expected_se, rtol=1e-6)
    assert result["loglik"] == pytest.approx(loglik, rel=1e-6)
    assert result["n"] == len(pooled) and result["events"] == pooled.event.sum()
    # the baseline is released at days >= 5 pooled persons leave (the last step at the horizon): no shown
    # time is one person's day (cdm.analyses.km.released_rows); steps of 0 or >= 5 deaths
    base = result["baseline"]
    assert base["times"] and any(base["coarsened"])
    leaving = pooled.time.value_counts()
    assert all(leaving.get(t, 0) >= 5 for t in base["times"][:-1])
    assert leaving.get(base["times"][-1], 0) >= 5 or base["times"][-1] >= pooled.time[pooled.event == 1].max()


def test_secure_time_varying_cox_equals_lifelines(network, pooled):
    result = done(network.run(spec({"type": "cox", "time": TIME, "covariates": ["age", "creat"], "mode": "pooled",
                                    "ties": "efron", "time_varying": True})))
    rows = intervals(pooled)
    ref = CoxTimeVaryingFitter().fit(rows, id_col="id", event_col="event", start_col="start", stop_col="stop",
                                     fit_options=TIGHT)
    np.testing.assert_allclose([r["coef"] for r in result["coefficients"]], ref.params_[["age", "creat"]].to_numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose([r["se"] for r in result["coefficients"]],
                               ref.standard_errors_[["age", "creat"]].to_numpy(), rtol=1e-6)


def test_secure_km_and_logrank_are_exact_at_every_released_time(network, pooled, tmp_path):
    job = network.run(spec({"type": "km", "time": TIME, "group": "arm", "bin_days": 7}))
    result = done(job)
    arm = np.where(pooled.armb == 1, "B", "A")
    for label in ("A", "B"):
        curve = result["groups"][label]
        part = pooled[arm == label]
        ref = KaplanMeierFitter().fit(rounds.bin_time(part.time, 7), part.event)
        np.testing.assert_allclose(curve["survival"], ref.survival_function_at_times(curve["times"]).to_numpy(),
                                   rtol=1e-12)
        assert len(curve["coarsened"]) == len(curve["times"]) and any(curve["coarsened"])
        assert all(e == 0 or e >= 5 for e in curve["events"]) and min(curve["at_risk"]) >= 5
    test = multivariate_logrank_test(pooled.time, arm, pooled.event)
    assert result["logrank"]["statistic"] == pytest.approx(test.test_statistic, rel=1e-9)
    # the coarsening is said per time point in JSON, CSV and text
    csv = network.call("GET", f"/v1/jobs/{job['job_id']}/result.csv")
    if csv.status_code == 200:
        assert "coarsened" in csv.text.splitlines()[0]
    from coordinator.results import job_csv
    from coordinator.stats.text import render

    assert "coarsened" in job_csv(job).splitlines()[0]
    assert "coarsened at t =" in render(result)


def test_secure_glm_and_quantiles_equal_statsmodels_and_numpy(network, pooled):
    import statsmodels.api as sm

    logit = done(network.run(spec({"type": "glm", "family": "binomial", "outcome": "armb", "covariates": ["age"]})))
    ref = sm.Logit(pooled.armb, sm.add_constant(pooled[["age"]].astype(float))).fit(disp=0)
    np.testing.assert_allclose([r["coef"] for r in logit["coefficients"]], ref.params.to_numpy(), rtol=1e-6)
    linear = done(network.run(spec({"type": "glm", "family": "gaussian", "outcome": "age", "covariates": ["armb"]})))
    ols = sm.OLS(pooled.age.astype(float), sm.add_constant(pooled[["armb"]].astype(float))).fit()
    np.testing.assert_allclose([r["coef"] for r in linear["coefficients"]], ols.params.to_numpy(), rtol=1e-9)
    quantiles = done(network.run(spec({"type": "quantile", "variable": "age", "probs": [0.5, 0.1]})))
    assert [q["value"] for q in quantiles["quantiles"]] == [np.quantile(pooled.age, 0.5), np.quantile(pooled.age, 0.1)]
    count = done(network.run(spec({"type": "count"})))
    assert count["rows"][0]["pooled"]["n"] == len(pooled) and count["rows"][0]["per_site"] == {}


EDGES = [35, 37, 50, 65, 85]  # the first bin holds two birth years: a few persons per site, more pooled


def _pooled_cells(pooled) -> dict:
    """The crosstab arm x age-band over the pooled rows, as pandas counts it."""
    band = pd.cut(pooled.age, EDGES, right=False).map(lambda i: f"[{float(i.left)}, {float(i.right)})").astype(str)
    arm = np.where(pooled.armb == 1, "B", "A")
    return pd.crosstab(arm, band).stack().to_dict()


def test_secure_crosstab_histogram_summary_correlation_equal_pandas_and_numpy(network, pooled):
    from cdm.suppression import suppress_cells

    job = network.run(spec({"type": "crosstab", "by": ["arm", "age"], "bins": {"age": EDGES}}))
    table = done(job)
    reference = _pooled_cells(pooled)
    cells = {tuple(r["key"]): r["pooled"] for r in table["rows"]}
    inner = [k for k in cells if k[1] not in ("below", "above")]
    assert set(inner) == set(reference)
    keys = sorted(cells, key=lambda k: tuple(map(str, k)))
    hidden = {keys[i] for i in suppress_cells(keys, [reference.get(k, 0) for k in keys], 5)}
    for key, cell in cells.items():  # every pooled cell exact, hidden exactly where the pooled table needs it
        assert cell["n"] == (None if key in hidden else reference.get(key, 0)), key
        assert cell["complete"] and cell["suppressed_at"] == []
    assert all(r["per_site"] == {} for r in table["rows"])
    # the pooled minimum released cells that some site alone holds fewer than 5 of
    shown_small_at_a_site = [k for k in inner if cells[k]["n"] is not None and any(
        0 < _pooled_cells(persons(s)).get(k, 0) < 5 for s in SITES)]
    assert shown_small_at_a_site, "the data should have cells small at one site and not pooled"

    jobs = [job, network.run(spec({"type": "histogram", "variable": "age", "edges": EDGES}))]
    histogram = done(jobs[-1])
    counts, _ = np.histogram(pooled.age, bins=EDGES)
    by_bin = {r["key"][0]: r["pooled"]["n"] for r in histogram["rows"]}
    assert [by_bin[f"[{EDGES[i]:g}, {EDGES[i + 1]:g})"] for i in range(len(EDGES) - 1)] == counts.tolist()
    assert by_bin["below"] is None and by_bin["above"] is None  # empty cells read like small ones

    jobs.append(network.run(spec({"type": "summary", "variables": ["age", "creat"]})))
    summary = done(jobs[-1])
    row = {r["key"][0]: r["pooled"] for r in summary["rows"]}
    assert row["age"]["n"] == len(pooled)
    assert row["age"]["mean"] == pytest.approx(pooled.age.mean(), rel=1e-12)
    assert row["age"]["variance"] == pytest.approx(pooled.age.var(ddof=1), rel=1e-9)
    assert row["creat"]["n"] == len(pooled)  # the measurement's first value per person, as a plain summary
    assert all(r["per_site"] == {} for r in summary["rows"])

    jobs.append(network.run(spec({"type": "correlation", "variables": ["age", "armb"]})))
    corr = done(jobs[-1])
    ref = pooled[["age", "armb"]].to_numpy(float)
    np.testing.assert_allclose(corr["correlation"], np.corrcoef(ref.T), rtol=1e-9)
    np.testing.assert_allclose(corr["covariance"], np.cov(ref.T), rtol=1e-9)
    assert corr["n"] == len(pooled)
    # what the coordinator holds of these jobs (API answers, store rows, log): no site's own sums or cells
    from sqlalchemy import MetaData, select

    text = json.dumps([network.call("GET", f"/v1/jobs/{j['job_id']}").json() for j in jobs])
    meta = MetaData()
    meta.reflect(network.home.store.engine)
    with network.home.store.engine.connect() as conn:
        store = json.dumps([[str(v) for v in row] for t in meta.sorted_tables if "job_id" in t.c for j in jobs
                            for row in conn.execute(select(t).where(t.c.job_id == j["job_id"]))])
    assert all(j["job_id"] in store for j in jobs)
    log = (network.root / "coordinator.log").read_text(errors="replace")
    for site in SITES:
        own = persons(site)
        for value in (int(own.age.sum()), int((own.age ** 2).sum()), int((own.age * own.armb).sum())):
            for where, blob in (("API", text), ("store", store), ("log", log)):
                assert not re.search(rf"(?<![\w.:/\-]){value}(?![\w.:])", blob), (site, value, where)


def test_secure_concordance_equals_the_pooled_table_and_statsmodels_kappa(network, pooled):
    from statsmodels.stats.inter_rater import cohens_kappa

    calls = {"imaging": {"kind": "condition", "codes": ["SNOMED:333333"]},
             "ctdna": {"kind": "condition", "codes": ["SNOMED:444444"]}}
    analysis = {"type": "concordance", "imaging": "imaging", "ctdna": "ctdna", "imaging_sens": 0.8,
                "imaging_spec": 0.9, "ctdna_sens": 0.7, "ctdna_spec": 0.95, "prior": 0.3}
    result = done(network.run({"cohort": COHORT, "variables": {**VARIABLES, **calls}, "analysis": analysis}))
    i, c = pooled.imaging.to_numpy(bool), pooled.ctdna.to_numpy(bool)
    table = [[int((i & c).sum()), int((i & ~c).sum())], [int((~i & c).sum()), int((~i & ~c).sum())]]
    assert result["table"]["cells"] == table and result["n"] == len(pooled) and result["complete"]
    ref = cohens_kappa(np.array(table))
    assert result["agreement"]["kappa"] == pytest.approx(ref.kappa, rel=1e-12)
    assert result["agreement"]["se"] == pytest.approx(ref.std_kappa, rel=1e-9)
    assert sum(result["bands"].values()) == len(pooled)


def _site_values(site: str) -> list[str]:
    """Numbers only this site knows: its size, its events, its own stratified fit at beta = 0."""
    df = persons(site)
    fit = rounds.cox_stratified(None, df.time.to_numpy(), df.event.to_numpy(), df[["age", "armb"]].to_numpy(float),
                                [0.0, 0.0], "efron")
    own = [fit["loglik"], *fit["gradient"], fit["hessian"][0][0]]
    return [str(len(df)), str(int(df.event.sum()))] + [f"{v:.10g}"[:9] for v in own]


def test_the_coordinator_keeps_no_site_value_of_a_secure_job(network):
    job = network.run(spec({"type": "cox", "time": TIME, "covariates": ["age", "armb"], "mode": "stratified",
                            "ties": "efron"}))
    done(job)
    job_id = job["job_id"]
    api = json.dumps(network.call("GET", f"/v1/jobs/{job_id}").json())
    api += network.call("GET", f"/v1/jobs/{job_id}/result.csv").text
    from sqlalchemy import MetaData, select

    store = network.home.store
    meta = MetaData()
    meta.reflect(store.engine)
    with store.engine.connect() as conn:  # every row of the store that belongs to this job
        dump = json.dumps([[str(v) for v in row] for t in meta.sorted_tables if "job_id" in t.c
                           for row in conn.execute(select(t).where(t.c.job_id == job_id))])
    log = (network.root / "coordinator.log").read_text(errors="replace")
    assert job_id in dump and job_id in api
    for where, text in (("API", api), ("store", dump), ("log", log)):
        for site in SITES:
            for value in _site_values(site):
                found = re.search(rf"(?<![\w.:/\-]){re.escape(value)}(?![\w.:])", text)
                assert found is None, f"{site}'s own value {value} appears in the coordinator's {where}: " \
                                      f"{text[max(found.start() - 80, 0):found.end() + 20]!r}"
    assert all(s["status"] == "ok" and s["result"] is None and "secure" in s["message"] for s in job["per_site"])
    # the same search finds a site's own count where plain mode releases one
    plain = json.dumps(network.run(spec({"type": "count"}, secure=False)))
    assert re.search(r'(?<![\w.:/\-])123(?![\w.:])', plain)


def test_a_chosen_beta_is_refused_by_every_node(network):
    tampered = {"type": "cox_round", "time": TIME, "covariates": ["age", "armb"], "beta": [0.0, 3.0], "mode": "pooled"}
    job = network.run(spec(tampered))
    assert {s["site"]: s["code"] for s in job["per_site"]} == {s: "ROUND_LOCKED" for s in SITES}
    # the first round of the algorithm (beta = 0) is what a node answers (plain here: not a secure type)
    first = network.run(spec({**tampered, "beta": [0.0, 0.0], "mode": "stratified"}, secure=False))
    assert {s["status"] for s in first["per_site"]} == {"ok"}


def _certificates(network) -> dict:
    """Each site's key certificate as its last heartbeat carried it to the coordinator."""
    return {s["name"]: (s.get("heartbeat") or {})["secagg"]["certificate"] for s in network.home.store.sites()}


def _secure_request(site: str, analysis: dict, peers: dict, session: str) -> dict:
    return {**wire.make_request(spec(analysis), "alice", session.split("/")[0], site=site),
            "secure": {"protocol": secagg.PROTOCOL, "session": session, "peers": peers}}


def _as_coordinator(network, requests: list[tuple[str, dict]]) -> list[dict]:
    """Send signed requests as the coordinator would (its bus account and signing key): the attacker
    here is the coordinator itself."""
    import nats

    from coordinator.natsconf import COORDINATOR_USER

    keys = network.home.store.public_keys()

    async def one(nc, site, record):
        for _ in range(50):  # a node restarted a moment ago may not have subscribed yet
            try:
                return await nc.request(wire.request_subject(site), network.home.signer.seal(record), timeout=30)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.2)
        raise AssertionError(f"{site} never subscribed")

    async def go():
        nc = await nats.connect(network.home.nats_url, user=COORDINATOR_USER, password=network.home.nats_password)
        try:
            replies = await asyncio.gather(*(one(nc, site, record) for site, record in requests))
        finally:
            await nc.close()
        return [wire.verify(m.data, site, keys[site]) for (site, _), m in zip(requests, replies)]

    return asyncio.run(go())


def test_a_coordinator_that_substitutes_a_sites_key_is_refused_and_learns_nothing(network, pooled):
    done(network.run(spec({"type": "count"})))  # every node has met every other's certified key
    genuine = _certificates(network)
    count = {"type": "count"}
    mallory = secagg.generate_key()  # the coordinator's own X25519 key, to be passed off as site-b's
    swapped = copy.deepcopy(genuine["site-b"])
    swapped["record"]["key"] = secagg.public_text(mallory)  # site-b's certificate, key replaced
    forged = secagg.certify(wire.Signer("site-b", wire.generate_key()), mallory)  # signed by a key it made
    # against site-a alone: every peer replaced, so that the coordinator could derive all of site-a's masks
    everyone = {s: secagg.certify(wire.Signer(s, wire.generate_key()), mallory) for s in SITES if s != "site-a"}
    attacks = [("swapped", {**genuine, "site-b": swapped}, ["site-a", "site-c", "site-d"]),
               ("forged", {**genuine, "site-b": forged}, ["site-a", "site-c", "site-d"]),
               ("everyone", {**genuine, **everyone}, ["site-a"])]
    for label, peers, victims in attacks:
        replies = _as_coordinator(network, [(s, _secure_request(s, count, peers, f"evil-{label}/round-1/attempt-1"))
                                            for s in victims])
        for site, reply in zip(victims, replies):
            assert reply["status"] == "refused" and reply["code"] == "SECURE_PEERS", (label, site, reply)
            assert reply["result"] is None and "not signed by the key trusted for site-b" in reply["message"], reply
    # the same channel with the genuine certificates: shares, which only all together unmask (to the sum)
    replies = _as_coordinator(network, [(s, _secure_request(s, count, genuine, "honest/round-1/attempt-1"))
                                        for s in SITES])
    assert [r["status"] for r in replies] == ["ok"] * len(SITES)
    from coordinator.secure import combine

    shares = {site: r["result"] for site, r in zip(SITES, replies)}
    assert combine(shares, "honest/round-1/attempt-1")["n"] == len(pooled)
    alone = secagg.decode(secagg.from_text(shares["site-a"]["secure"]["share"], 1))[0]
    assert alone != SITES["site-a"]  # one share by itself is not the site's count


def test_a_chosen_quantile_threshold_is_refused_by_every_node(network, pooled):
    from cdm.analyses.quantile import LOCK, expected_thresholds

    job = network.run(spec({"type": "quantile_round", "variable": "age", "thresholds": [60.0]}))
    assert {s["site"]: s["code"] for s in job["per_site"]} == {s: "ROUND_LOCKED" for s in SITES}
    # the coordinator itself, in round 2 of an honest bisection, slips in a threshold of its choosing
    first = expected_thresholds(None)
    ages = pooled.age.to_numpy(float)
    counts = [int((ages <= t).sum()) for t in first]
    lock = {"algorithm": LOCK, "probs": [0.5], "rounds": [{"n": len(ages), "lower": counts, "upper": counts}]}
    honest = expected_thresholds(lock)
    tampered = sorted(honest[:-1] + [60.5])  # 60.5 splits the persons aged 60 from those aged 61
    assert tampered != honest

    def asked(thresholds):
        analysis = {"type": "quantile_round", "variable": "age", "thresholds": thresholds}
        return _as_coordinator(network, [(s, {**wire.make_request(spec(analysis), "alice", "evil-q", site=s),
                                              "lock": lock}) for s in SITES])

    assert [(r["status"], r["code"]) for r in asked(tampered)] == [("refused", "ROUND_LOCKED")] * len(SITES)
    assert all(r["result"] is None for r in asked(tampered))
    assert [r["status"] for r in asked(honest)] == ["ok"] * len(SITES)  # the algorithm's own step is answered


def test_a_site_killed_mid_analysis_is_dropped_and_the_fit_rerun_without_it(network, pooled):
    job_id = network.submit(spec({"type": "cox", "time": TIME, "covariates": ["age", "armb"], "mode": "pooled",
                                  "ties": "efron"}, timeout=10))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # site-d has answered its first round (the grid)
        job, sites = network.per_site(job_id)
        if "round " in (sites["site-d"].get("message") or "") or job["status"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    network.stop_node("site-d", sig=signal.SIGKILL)
    assert job["status"] == "running", "the job ended before site-d could be killed mid-analysis"
    job, sites = network.per_site(job_id, wait=90)
    while job["status"] in ("queued", "running"):
        job, sites = network.per_site(job_id, wait=30)
    assert job["status"] == "partial", job["message"]
    result = job["pooled"]
    assert result["secure"]["dropped"] == ["site-d"] and result["sites"] == ["site-a", "site-b", "site-c"]
    assert "no share for secure round" in sites["site-d"]["message"] and "re-run without this site" in \
        sites["site-d"]["message"]
    rest = pooled[pooled.site != "site-d"]
    ref = CoxPHFitter().fit(rest[["time", "event", "age", "armb"]], "time", "event", fit_options=TIGHT)
    np.testing.assert_allclose([r["coef"] for r in result["coefficients"]], ref.params_.to_numpy(), rtol=1e-6)


def test_a_secure_session_replayed_after_a_node_restart_is_refused(network):
    """The sessions a node masked live in its state database: after a restart, the same session
    asked again over changed data (which would reveal the change) is still refused."""
    if network.nodes["site-d"].poll() is not None:  # killed by the test before
        network.start_node("site-d")
    peers = _certificates(network)
    count = {"type": "count"}
    session = "replayed/round-1/attempt-1"
    first = _as_coordinator(network, [("site-d", _secure_request("site-d", count, peers, session))])[0]
    assert first["status"] == "ok", first
    network.stop_node("site-d")
    from cdm.db import open_engine

    engine = open_engine(network.dbs["site-d"])
    index = Vocabulary(engine).concept_for("SNOMED", "443487006", "index", "Condition").concept_id
    added = range(900_000, 900_020)  # past differencing_k: the change itself is not refused
    with engine.begin() as conn:
        conn.execute(insert(metadata.tables["person"]), [
            {"person_id": p, "gender_concept_id": 8507, "year_of_birth": 1960, "race_concept_id": 0,
             "ethnicity_concept_id": 0} for p in added])
        conn.execute(insert(metadata.tables["condition_occurrence"]), [
            {"condition_occurrence_id": 2 * p, "person_id": p, "condition_concept_id": index,
             "condition_start_date": INDEX, "condition_type_concept_id": 32817} for p in added])
    engine.dispose()
    network.start_node("site-d")
    again = _as_coordinator(network, [("site-d", _secure_request("site-d", count, peers, session))])[0]
    assert again["status"] == "refused" and again["code"] == "SECURE_REPLAY" and again["result"] is None, again
    fresh = _as_coordinator(network, [("site-d", _secure_request("site-d", count, peers, "replayed/round-1/attempt-2"))])
    assert fresh[0]["status"] == "ok"
