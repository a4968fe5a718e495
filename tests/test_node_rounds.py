"""Node side of the survival / model / concordance / habitat rounds, on a small CDM built with Core.

Every expected value is computed here from the raw rows we insert (not through the module under
test), or by lifelines / scipy on the same data.
"""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from lifelines import CoxTimeVaryingFitter
from lifelines.utils import add_covariate_to_timeline
from scipy.stats import norm
from sqlalchemy import func, insert, select

from cdm import conformance, rounds
from cdm.compiler import Resolver
from cdm.round_frames import biopsy_frame, biopsy_query, compile_intervals, compile_survival, survival_frame
from cdm.schema import tables
from cdm.spec import SpecError, parse_spec
from node.audit import AuditLog
from node.config import NodeConfig, load_config
from node.execute import run_request
from node.disclosure.policy import Policy, Refusal
from cdm.analyses import SiteData, site_kind
from cdm.analyses.km import coarsen_km, hide_groups

D = dt.date
N = 30
BASE = D(2020, 1, 1)
PFA, PFB, PROGRESSION, STABLE, REGIMEN = 2000000700, 2000000701, 2000000400, 2000000401, 32531
TF, SUV = "tf", "suv"
HABITATS = ["habitat_hypercellular", "habitat_necrotic", "habitat_oedema"]


def _site(spec, policy, engine=None, site="local", values=None):
    """The site half of ``spec``'s analysis kind, called as the node calls it."""
    return site_kind(spec.analysis.type).site(spec, SiteData(np.zeros(0, dtype=np.int64), values or {}, engine, site), policy)


def _concordance_site(spec, values, policy):
    return _site(spec, policy, values=values)


def index_day(i):
    return BASE + dt.timedelta(days=i)


def obs_end(i):
    """Days from index to the end of observation (None: no observation period)."""
    return {29: None, 30: 0}.get(i, 50 + 5 * i)


def death_day(i):
    if i == 2:
        return 500  # after the end of observation: still a death
    return 20 + 2 * i if i % 4 == 0 else None


def progression_day(i):
    """First progression episode strictly after index (i%3==0 via episode_concept_id, i%3==1 via
    episode_object_concept_id)."""
    return 15 + i if i % 3 == 0 else (12 + i if i % 3 == 1 else None)


def tf_draws(i):
    """(day, tumour fraction, detected) of each ctDNA draw; persons i%5==0 repeat a value (no split);
    persons i%7==0 have no day-0 draw (the day -5 value is carried in)."""
    base = 0.05 * ((i * 37) % 11) + 0.001 * i
    draws = [(-5, 0.5 + 0.001 * i, False)]
    if i % 7:
        draws.append((0, base, False))
    day20 = base + 0.02 * ((i * 5) % 3)
    draws += [(20, day20, False), (40, day20 if i % 5 == 0 else base + 0.03, False),
              (60, base + 0.01 * (i % 4) + 0.005, i % 2 == 0)]
    return draws


def suv_scans(i):
    return [(10, 2.0 + 0.3 * ((i * 13) % 7) + 0.001 * i), (30, 1.5 + 0.2 * ((i * 3) % 5) + 0.001 * i)] if i <= 25 else []


def biopsies(i):
    """(habitat, distance mm, registration error mm, has TP53) of person i's located biopsies."""
    if i > 24:
        return []
    out = []
    for k in range(3):
        habitat = HABITATS[(i + k) % 3]
        positive = (habitat == "habitat_hypercellular") == ((i * 7 + k) % 4 != 0)
        out.append((habitat, 0.5 + ((i * 3 + k) % 7), 1.0 + (i + k) % 3, positive))
    return out


def load(engine):
    rows = {t: [] for t in ("person", "observation_period", "condition_occurrence", "death", "episode",
                            "ctdna_result", "image_occurrence", "image_feature", "measurement", "specimen",
                            "biopsy_location", "variant_occurrence")}
    for i in range(1, N + 1):
        idx = index_day(i)
        rows["person"].append(dict(person_id=i, gender_concept_id=8507 if i % 2 else 8532, year_of_birth=1950 + i,
                                   race_concept_id=0, ethnicity_concept_id=0, person_source_value=f"MRN{i:03d}"))
        rows["condition_occurrence"].append(dict(condition_occurrence_id=i, person_id=i, condition_concept_id=PFA,
                                                 condition_start_date=idx, condition_type_concept_id=0))
        if obs_end(i) is not None:
            rows["observation_period"].append(dict(observation_period_id=i, person_id=i, period_type_concept_id=0,
                                                   observation_period_start_date=idx - dt.timedelta(days=10),
                                                   observation_period_end_date=idx + dt.timedelta(days=obs_end(i))))
        if death_day(i):
            rows["death"].append(dict(person_id=i, death_date=idx + dt.timedelta(days=death_day(i))))
        if i % 3 == 0:
            rows["episode"].append(dict(episode_id=1000 + i, person_id=i, episode_concept_id=PROGRESSION,
                                        episode_object_concept_id=PFA, episode_type_concept_id=0,
                                        episode_start_date=idx + dt.timedelta(days=progression_day(i))))
        elif i % 3 == 1:
            rows["episode"].append(dict(episode_id=1000 + i, person_id=i, episode_concept_id=REGIMEN,
                                        episode_object_concept_id=PROGRESSION, episode_type_concept_id=0,
                                        episode_start_date=idx + dt.timedelta(days=progression_day(i))))
        for k, day in enumerate((0, -3)):  # on the index day and before it: never the event
            rows["episode"].append(dict(episode_id=2000 + 10 * i + k, person_id=i, episode_concept_id=PROGRESSION,
                                        episode_object_concept_id=PFA, episode_type_concept_id=0,
                                        episode_start_date=idx + dt.timedelta(days=day)))
        rows["episode"].append(dict(episode_id=3000 + i, person_id=i, episode_concept_id=STABLE,
                                    episode_object_concept_id=PFA, episode_type_concept_id=0,
                                    episode_start_date=idx + dt.timedelta(days=8)))
        for k, (day, tf, detected) in enumerate(tf_draws(i)):
            rows["ctdna_result"].append(dict(ctdna_result_id=100 * i + k, person_id=i, tumour_fraction=tf,
                                             detected=detected, result_date=idx + dt.timedelta(days=day)))
        for k, (day, value) in enumerate(suv_scans(i)):
            rows["image_occurrence"].append(dict(
                image_occurrence_id=100 * i + k, person_id=i, image_occurrence_date=idx + dt.timedelta(days=day),
                image_study_uid=f"1.2.{i}", image_series_uid=f"1.2.{i}.{k}", modality_concept_id=0,
                modality_source_value="PT"))
            rows["image_feature"].append(dict(
                image_feature_id=100 * i + k, person_id=i, image_occurrence_id=100 * i + k,
                image_feature_concept_id=2000000102, image_feature_source_value="suv_max",
                image_feature_type_concept_id=0, alg_system="test", value_as_number=value))
        if i == 29:  # no observation period: censored at the last record
            rows["measurement"].append(dict(measurement_id=i, person_id=i, measurement_concept_id=2000000200,
                                            measurement_date=idx + dt.timedelta(days=75), measurement_type_concept_id=0))
        for k, (habitat, distance, error, positive) in enumerate(biopsies(i)):
            sid = 100 * i + k
            rows["specimen"].append(dict(specimen_id=sid, person_id=i, specimen_concept_id=0, specimen_type_concept_id=0,
                                         specimen_date=idx))
            rows["biopsy_location"].append(dict(biopsy_location_id=sid, person_id=i, specimen_id=sid, x_mm=0.0,
                                                y_mm=0.0, z_mm=float(k), registration_error_mm=error,
                                                habitat_label=habitat, distance_to_border_mm=distance))
            rows["variant_occurrence"].append(dict(variant_occurrence_id=sid, person_id=i, specimen_id=sid,
                                                   variant_date=idx, target_gene1_symbol="TP53" if positive else "KRAS",
                                                   variant_type="snv", is_ctdna=False))
    # left out of habitat rounds: no specimen, an unlisted habitat, no distance
    for k, (sid, habitat, distance) in enumerate(((None, HABITATS[0], 2.0), (9001, "habitat_enhancing", 2.0),
                                                  (9002, HABITATS[1], None))):
        rows["biopsy_location"].append(dict(biopsy_location_id=9000 + k, person_id=1, specimen_id=sid, x_mm=0.0,
                                            y_mm=0.0, z_mm=0.0, registration_error_mm=1.0, habitat_label=habitat,
                                            distance_to_border_mm=distance))
    with engine.begin() as c:
        for table, values in rows.items():
            if values:
                c.execute(insert(tables[table]), values)


COHORT = {"index": {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]}}
VARS = {"age": {"kind": "age"}, "sex": {"kind": "sex"},
        TF: {"kind": "ctdna", "field": "tumour_fraction", "time_varying": True, "window": {"start": -10}},
        SUV: {"kind": "image_feature", "code": "RADFED:suv_max", "time_varying": True},
        "imaging": {"kind": "episode", "codes": ["RADFED:progression"], "window": {"start": 1}},
        "ctdna_pos": {"kind": "ctdna", "field": "detected", "reduce": "last"}}
DEATH = {"event": {"kind": "death"}}
PROG = {"event": {"kind": "episode", "code": "RADFED:progression"}}


def spec_of(analysis, variables=VARS):
    return parse_spec({"cohort": COHORT, "variables": variables, "analysis": analysis})


def expected_survival(event_day, max_days=None):
    """(person, time, event) by the documented rules, computed from the generators above."""
    out = []
    for i in range(1, N + 1):
        e = event_day(i)
        if e is not None:
            t, d = e, 1
        else:
            t, d = (obs_end(i) if obs_end(i) is not None else 75), 0
        if max_days is not None and t > max_days:
            t, d = max_days, 0
        if t > 0:
            out.append((i, t, d))
    return out


@pytest.fixture
def cdm(any_cdm):
    load(any_cdm)
    return any_cdm


def test_survival_times_match_hand_computation(cdm):
    km = {"type": "km_round", "time": DEATH}
    s = compile_survival(spec_of(km), spec_of(km).analysis.time, [], cdm)
    assert list(zip(s.person_id.tolist(), s.time.tolist(), s.event.tolist())) == expected_survival(death_day)
    assert s.excluded == 1  # person 30: observation ends on the index day
    assert dict(zip(s.person_id.tolist(), s.time.tolist()))[2] == 500 and dict(zip(s.person_id.tolist(), s.time.tolist()))[29] == 75
    prog = spec_of({"type": "km_round", "time": {**PROG, "max_days": 40}})
    s = compile_survival(prog, prog.analysis.time, [], cdm)
    # both ways of storing progression count; index-day and earlier episodes never do
    assert list(zip(s.person_id.tolist(), s.time.tolist(), s.event.tolist())) == expected_survival(progression_day, 40)
    cond = spec_of({"type": "km_round", "time": {"event": {"kind": "condition", "code": "RADFED:ependymoma_pfb"}}})
    s = compile_survival(cond, cond.analysis.time, [], cdm)
    assert s.event.sum() == 0 and len(s.time) == N - 1


def _lifelines_intervals(survival):
    base = pd.DataFrame({"id": survival.person_id, "start": 0.0, "stop": survival.time.astype(float),
                         "event": survival.event.astype(bool)})
    tf = [(i, max(day, 0), v) for i in survival.person_id.tolist() for day, v, _ in tf_draws(i) if day >= -10]
    tf = pd.DataFrame(tf, columns=["id", "t", TF]).groupby(["id", "t"], as_index=False).last()
    suv = pd.DataFrame([(i, day, v) for i in survival.person_id.tolist() for day, v in suv_scans(i)],
                       columns=["id", "t", SUV])
    long = add_covariate_to_timeline(base, tf, "id", "t", "event")
    long = add_covariate_to_timeline(long, suv, "id", "t", "event")
    long = long.dropna(subset=[TF, SUV]).sort_values(["id", "start"]).reset_index(drop=True)
    age = dict(zip(survival.person_id.tolist(), survival.values["age"]))
    long["age"] = long["id"].map(age)
    return long


def test_counting_process_equals_lifelines(cdm):
    spec = spec_of({"type": "cox_round", "time": PROG, "covariates": ["age", TF, SUV], "beta": [0, 0, 0],
                    "time_varying": True})
    survival, iv = compile_intervals(spec, spec.analysis.time, ["age", TF, SUV], cdm)
    expected = _lifelines_intervals(survival)
    assert iv.names == ["age", TF, SUV]
    assert iv.person_id.tolist() == expected["id"].tolist()
    assert iv.start.tolist() == expected["start"].tolist() and iv.stop.tolist() == expected["stop"].tolist()
    assert iv.event.astype(bool).tolist() == expected["event"].tolist()
    assert np.allclose(iv.X, expected[["age", TF, SUV]].to_numpy())
    # the pre-index draw is carried in where there is no day-0 draw; repeated values do not split
    seven = expected[expected["id"] == 7].iloc[0]
    assert seven["start"] == 10 and seven[TF] == pytest.approx(0.507)  # first SUV scan on day 10
    five = iv.start[iv.person_id == 5].tolist()
    assert 40.0 not in five and 20.0 in five


def site_config(tmp_path, **policy):
    return NodeConfig(tmp_path / "node.toml", {"site": {"name": "site-t"}, "policy": policy})


def test_cox_round_gradient_vanishes_at_lifelines_fit(cdm, tmp_path):
    spec = spec_of({"type": "cox_round", "time": PROG, "covariates": ["age", TF, SUV], "beta": [0, 0, 0],
                    "time_varying": True})
    survival, _ = compile_intervals(spec, spec.analysis.time, ["age", TF, SUV], cdm)
    long = _lifelines_intervals(survival)
    fit = CoxTimeVaryingFitter().fit(long[["id", "start", "stop", "event", "age", TF, SUV]], id_col="id",
                                     event_col="event", start_col="start", stop_col="stop")
    beta = fit.params_[["age", TF, SUV]].tolist()
    request = {"request_id": "r", "requester": "t", "spec": {
        "cohort": COHORT, "variables": VARS,
        "analysis": {"type": "cox_round", "time": PROG, "covariates": ["age", TF, SUV], "beta": beta,
                     "time_varying": True, "ties": "efron"}}}
    response = run_request(cdm, site_config(tmp_path, rows_per_parameter=5), request)
    assert response["status"] == "ok", response
    result = response["result"]
    assert result["loglik"] == pytest.approx(fit.log_likelihood_, rel=1e-6)
    assert np.allclose(result["gradient"], 0, atol=1e-4)
    assert result["persons"] == len(set(long["id"])) and result["intervals"] == len(long)


def test_cox_and_glm_refuse_below_policy(cdm, tmp_path):
    spec = spec_of({"type": "cox_round", "time": PROG, "covariates": ["age", TF], "beta": [0, 0], "time_varying": True})
    with pytest.raises(Refusal) as refused:
        _site(spec, Policy(min_rows_model=100), cdm, "local")
    assert refused.value.code == "MIN_ROWS"
    with pytest.raises(Refusal) as refused:
        _site(spec, Policy(rows_per_parameter=20), cdm, "local")
    assert refused.value.code == "MIN_ROWS" and "40" in refused.value.message
    pooled = spec_of({**spec.analysis.model_dump(mode="json"), "mode": "pooled"})
    with pytest.raises(Refusal) as refused:
        _site(pooled, Policy(), cdm, "local")
    assert refused.value.code == "MIN_CELL" and "stratified" in refused.value.message
    ok = _site(pooled, Policy(min_cell_count=1), cdm, "local")
    survival, iv = compile_intervals(pooled, pooled.analysis.time, ["age", TF], cdm)
    assert len(ok["times"]) == len(ok["s0"]) and ok["n"] == ok["intervals"] == len(iv.stop)
    assert sum(ok["d"]) == int(iv.event.sum()) == sum(1 for i, _, d in expected_survival(progression_day) if d)
    static = spec_of({"type": "cox_round", "time": PROG, "covariates": ["age"], "beta": [0.05]})
    fit = _site(static, Policy(), cdm, "local")
    hand = expected_survival(progression_day)
    ages = np.array([70.0 - i for i, _, _ in hand])
    assert fit == {**rounds.cox_stratified(None, [t for _, t, _ in hand], [d for *_, d in hand], ages[:, None], [0.05]),
                   "persons": len(hand), "intervals": len(hand), "excluded": N - len(hand),
                   "concordance": rounds.concordance_counts([t for _, t, _ in hand], [d for *_, d in hand], 0.05 * ages)}
    glm = {"type": "glm_round", "family": "binomial", "outcome": "imaging", "covariates": ["age"], "beta": [0, 0]}
    r = run_request(cdm, None, {"request_id": "g", "requester": "t", "spec": {"cohort": COHORT, "variables": VARS, "analysis": glm}})
    assert r["status"] == "ok" and r["result"]["n"] == N
    y = np.array([1.0 if i % 3 == 0 else 0.0 for i in range(1, N + 1)])
    age = np.array([2020 - (1950 + i) for i in range(1, N + 1)], dtype=float)  # born 1 Jan (no month/day)
    X = np.column_stack([np.ones(N), age])
    assert r["result"] == rounds.glm_binomial(y, X, [0, 0])
    strict = site_config(tmp_path, min_rows_model=31)
    r = run_request(cdm, strict, {"request_id": "g2", "requester": "t", "spec": {"cohort": COHORT, "variables": VARS, "analysis": glm}})
    assert r["code"] == "MIN_ROWS" and r["result"] is None
    gauss = {"type": "glm_round", "family": "gaussian", "outcome": "age", "covariates": ["imaging"]}
    r = run_request(cdm, None, {"request_id": "g3", "requester": "t", "spec": {"cohort": COHORT, "variables": VARS, "analysis": gauss}})
    assert r["result"]["xty"] == pytest.approx(np.column_stack([np.ones(N), y]).T @ age)
    assert r["result"]["yty"] == pytest.approx(float(age @ age))


def test_km_round_equals_kernel_on_hand_arrays(cdm):
    analysis = {"type": "km_round", "time": DEATH, "group": "sex", "bin_days": 10}
    spec = spec_of(analysis)
    released = _site(spec, Policy(min_cell_count=1), cdm, "local")
    expected = expected_survival(death_day)
    sex = ["M" if i % 2 else "F" for i, _, _ in expected]
    kernel = rounds.km_counts([t for _, t, _ in expected], [d for _, _, d in expected], 10, sex)
    assert released["excluded"] == 1 and released["suppressed"] == []
    for label, counts in kernel.items():
        assert {k: released["groups"][label][k] for k in counts} == counts
        assert released["groups"][label]["merged"] == []


def test_km_coarsening_hides_small_bins_and_keeps_totals(cdm):
    spec = spec_of({"type": "km_round", "time": PROG, "bin_days": 5})
    response = run_request(cdm, None, {"request_id": "k", "requester": "t", "spec": spec.model_dump(mode="json", by_alias=True)})
    assert response["status"] == "ok", response
    group = response["result"]["groups"]["all"]
    expected = expected_survival(progression_day)
    assert all(n >= 5 for n in group["at_risk"]) and all(e == 0 or e >= 5 for e in group["events"])
    assert sum(group["events"]) == sum(d for *_, d in expected)
    assert sum(group["events"]) + sum(group["censored"]) == group["at_risk"][0] == len(expected)
    assert group["merged"] and group["bin_days_effective"] > 5
    assert all(b > a for a, b in zip(group["times"], group["times"][1:]))


def test_coarsen_km_rules():
    """A released interval ends only at a bin that >= 5 persons leave (a day k persons share) with 0
    or >= 5 events in it; the rest is a tail shown at the horizon (never a person's day)."""
    counts = {"times": [10, 20, 30, 40, 50], "at_risk": [20, 17, 12, 6, 2], "events": [3, 2, 5, 1, 1],
              "censored": [0, 3, 1, 3, 1]}
    out = coarsen_km(counts, 5, 10)  # 30 would end an interval, but the 6 after it hold 2 events: merged
    assert out["times"] == [20, 3660] and out["at_risk"] == [20, 12] and out["events"] == [5, 7]
    assert out["censored"] == [3, 5] and out["merged"] == [[10, 20], [30, 3660]]
    assert coarsen_km(counts, 5, 10, max_days=365)["times"] == [20, 370]  # the spec's horizon, on the grid
    assert coarsen_km({"times": [10], "at_risk": [4], "events": [4], "censored": [0]}, 5, 10) is None
    assert coarsen_km({"times": [10, 20], "at_risk": [9, 5], "events": [2, 1], "censored": [2, 4]}, 5, 10) is None
    untouched = {"times": [10, 20], "at_risk": [12, 6], "events": [6, 0], "censored": [0, 6]}
    assert coarsen_km(untouched, 5, 10)["times"] == [10, 20] and not coarsen_km(untouched, 5, 10)["merged"]
    censor_only = {"times": [10, 20, 30], "at_risk": [12, 6, 5], "events": [6, 0, 0], "censored": [0, 1, 5]}
    out = coarsen_km(censor_only, 5, 10)  # one censoring at 20 is not shown at 20: it joins the bin at 30
    assert out["times"] == [10, 30] and out["censored"] == [0, 6] and out["merged"] == [[20, 30]]
    assert hide_groups({"a": 3, "b": 40, "c": 9}, {"a"}, 5) == {"a", "c"}  # 3 not recoverable from the total
    assert hide_groups({"a": 3, "b": 40, "c": 1}, {"a"}, 5) == {"a", "c", "b"}  # 3 + 1 still < 5
    assert hide_groups({"a": 12, "b": 40}, {"a"}, 5) == {"a"}  # hidden for its events, its size is no secret


def _concordance(**extra):
    return {"type": "concordance", "imaging": "imaging", "ctdna": "ctdna_pos", "imaging_sens": 0.8,
            "imaging_spec": 0.9, "ctdna_sens": 0.7, "ctdna_spec": 0.95, "prior": 0.3, **extra}


def test_concordance_table_and_suppression(cdm):
    r = run_request(cdm, None, {"request_id": "c", "requester": "t",
                                "spec": {"cohort": COHORT, "variables": VARS, "analysis": _concordance()}})
    assert r["status"] == "ok", r
    both = sum(1 for i in range(1, N + 1) if i % 3 == 0 and i % 2 == 0)
    im_only = sum(1 for i in range(1, N + 1) if i % 3 == 0 and i % 2)
    ct_only = sum(1 for i in range(1, N + 1) if i % 3 and i % 2 == 0)
    assert r["result"]["table"] == [[both, im_only], [ct_only, N - both - im_only - ct_only]]
    post = rounds.posterior_progression([1, 1, 0, 0], [1, 0, 1, 0], 0.8, 0.9, 0.7, 0.95, 0.3)
    assert np.allclose(np.ravel(r["result"]["posterior"]), post)
    cells = [both, im_only, ct_only, N - both - im_only - ct_only]
    assert r["result"]["likely_progression"] == sum(c for c, p in zip(cells, post) if p >= 0.8)
    spec = spec_of(_concordance())
    strict = _concordance_site(spec, {"imaging": [1.0 if i % 3 == 0 else 0.0 for i in range(1, N + 1)],
                                               "ctdna_pos": [1.0 if i % 2 == 0 else 0.0 for i in range(1, N + 1)]},
                               Policy(min_cell_count=6))
    table = strict["table"]
    assert table[0] == [None, None]  # both 5s are small
    for line in (table[0], table[1], [table[0][0], table[1][0]], [table[0][1], table[1][1]]):
        assert sum(v is None for v in line) != 1  # no hidden cell recoverable from a margin
    for band in ("likely_progression", "indeterminate", "likely_response"):
        if strict[band] is None:
            assert band in strict["suppressed"]
    with pytest.raises(Refusal) as bad:
        _concordance_site(spec, {"imaging": [0.5] * 10, "ctdna_pos": [1.0] * 10}, Policy())
    assert bad.value.code == "BAD_SPEC"
    with pytest.raises(SpecError):
        spec_of(_concordance(imaging="age"))
    with pytest.raises(SpecError):
        spec_of(_concordance(band=[0.9, 0.1]))


def _habitat(**extra):
    return {"type": "habitat_round", "gene": "TP53", "variant_type": "snv", "habitats": HABITATS,
            "beta": [0.1, -0.2, 0.3], **extra}


def test_habitat_round_weights_and_design(cdm):
    spec = spec_of(_habitat())
    frame = biopsy_frame(spec, cdm, "TP53", "snv")
    assert frame.no_specimen == 1
    result = _site(spec, Policy(), cdm)
    rows = [b for i in range(1, 25) for b in biopsies(i)]
    y = np.array([float(b[3]) for b in rows])
    X = np.column_stack([np.ones(len(rows))] + [[1.0 if b[0] == h else 0.0 for b in rows] for h in HABITATS[1:]])
    w = norm.cdf(np.array([b[1] for b in rows]) / np.array([b[2] for b in rows]))
    expected = rounds.glm_binomial(y, X, [0.1, -0.2, 0.3], w)
    assert result["n"] == len(rows) and result["loglik"] == pytest.approx(expected["loglik"])
    assert np.allclose(result["gradient"], expected["gradient"]) and np.allclose(result["hessian"], expected["hessian"])
    assert result["sum_weights"] == pytest.approx(w.sum())
    assert result["excluded"] == {"no_specimen": 1, "other_habitat": 1, "no_distance": 1}
    with pytest.raises(Refusal) as refused:
        _site(spec, Policy(min_rows_model=500), cdm)
    assert refused.value.code == "MIN_ROWS"
    with pytest.raises(SpecError):
        spec_of(_habitat(beta=[0.0]))
    with pytest.raises(SpecError):
        spec_of(_habitat(gene=None, variant_type=None))


def test_round_requests_never_crash(sqlite_cdm):
    """Empty CDM, unknown codes, categorical covariates: refusals, not INTERNAL."""
    for analysis in ({"type": "km_round", "time": DEATH},
                     {"type": "cox_round", "time": PROG, "covariates": ["age"], "beta": [0]},
                     _concordance(), _habitat()):
        r = run_request(sqlite_cdm, None, {"request_id": "x", "requester": "t",
                                           "spec": {"cohort": COHORT, "variables": VARS, "analysis": analysis}})
        assert r["status"] in ("ok", "refused") and r["code"] != "INTERNAL", r
    evil = "x'); DROP TABLE person; --"
    spec = spec_of(_habitat(gene=evil))
    sql = str(biopsy_query(spec, Resolver(sqlite_cdm), evil, None).compile(sqlite_cdm))
    frame = survival_frame(spec, parse_spec({"cohort": COHORT, "analysis": {"type": "km_round", "time": {
        "event": {"kind": "condition", "code": "SNOMED:1"}}}}).analysis.time, [], Resolver(sqlite_cdm))
    assert evil not in sql and evil not in str(frame.query.compile(sqlite_cdm))
    r = run_request(sqlite_cdm, None, {"request_id": "e", "requester": "t", "spec": spec.model_dump(mode="json", by_alias=True)})
    assert r["code"] == "MIN_ROWS"  # the person table is still there: the text was a bound value

NUMERIC = ["age", TF, SUV, "imaging", "ctdna_pos"]
ENDS = [DEATH, PROG, {"event": {"kind": "condition", "code": "RADFED:ependymoma_pfa", "descendants": False}},
        {"event": {"kind": "episode", "code": "SNOMED:404"}, "max_days": 1}]
round_specs = st.one_of(
    st.builds(lambda t, g, b: {"type": "km_round", "time": t, "group": g, "bin_days": b},
              st.sampled_from(ENDS), st.sampled_from([None, "sex", "imaging", "ctdna_pos"]), st.integers(1, 400)),
    st.builds(lambda t, cov, mode, ties, tv, b: {"type": "cox_round", "time": t, "covariates": cov, "mode": mode,
                                                  "ties": ties, "time_varying": tv, "beta": [b] * len(cov)},
              st.sampled_from(ENDS), st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=3, unique=True),
              st.sampled_from(["stratified", "pooled"]), st.sampled_from(["breslow", "efron"]), st.booleans(),
              st.sampled_from([0.0, 0.5, -3.0, 800.0])),
    st.builds(lambda fam, y, cov, w: {"type": "glm_round", "family": fam, "outcome": y, "covariates": cov,
                                      "beta": [0.0] * (len(cov) + 1), **({"weights": w} if w else {})},
              st.sampled_from(["binomial", "gaussian"]), st.sampled_from(NUMERIC),
              st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=2, unique=True), st.sampled_from([None, TF, "age"])),
    st.builds(lambda band: _concordance(band=band), st.sampled_from([[0.2, 0.8], [0.01, 0.99], [0.5, 0.6]])),
    st.builds(lambda gene, vt, b: _habitat(gene=gene, variant_type=vt, beta=[b, b, b]),
              st.text(min_size=1, max_size=20), st.sampled_from([None, "snv", "cnv"]), st.sampled_from([0.0, 50.0]))
)


@pytest.fixture(scope="module")
def loaded_sqlite(tmp_path_factory):
    from cdm.db import create_cdm, open_engine

    engine = open_engine(tmp_path_factory.mktemp("fuzz") / "cdm.sqlite")
    create_cdm(engine, source_name="fuzz")
    load(engine)
    yield engine
    engine.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(round_specs, st.integers(1, 12))
def test_round_specs_never_crash_the_node(loaded_sqlite, analysis, min_cell):
    try:
        spec = spec_of(analysis)
    except SpecError:
        return
    r = run_request(loaded_sqlite, None, {"request_id": "f", "requester": "t",
                                          "spec": spec.model_dump(mode="json", by_alias=True)})
    assert r["code"] != "INTERNAL", (analysis, r)
    if r["status"] == "ok":
        json.dumps(r["result"], allow_nan=False)
    try:
        from node.execute import analyse
        analyse(spec, 3, {n: [1.0] * 3 for n in VARS}, Policy(min_cell_count=min_cell, min_rows_model=1,
                                                              rows_per_parameter=1), loaded_sqlite)
    except Refusal:
        pass


# -- per-patient CLI commands ---------------------------------------------------------------------------


@pytest.fixture
def site_toml(sqlite_cdm, tmp_path):
    load(sqlite_cdm)
    path = tmp_path / "node.toml"
    path.write_text(f'[site]\nname = "site-t"\n[database]\nurl = "{sqlite_cdm.url.database}"\n')
    return path


def _invoke(toml, *args):
    from node.cli import main

    return CliRunner().invoke(main, ["--config", str(toml), *args])


def test_concordance_command_pairs_imaging_with_nearest_ctdna(site_toml):
    done = _invoke(site_toml, "concordance", "--person", "MRN006", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    rows = report["assessments"]
    idx = index_day(6)
    assert [r["date"] for r in rows] == [(idx + dt.timedelta(days=d)).isoformat() for d in (-3, 0, 8, 21)]
    assert [r["imaging"] for r in rows] == ["progression", "progression", "stable", "progression"]
    assert [r["ctdna_date"] for r in rows] == [(idx + dt.timedelta(days=d)).isoformat() for d in (-5, 0, 0, 20)]
    expected = rounds.posterior_progression([1], [0], 0.8, 0.9, 0.7, 0.95, 0.3)[0]
    assert rows[0]["posterior"] == pytest.approx(expected) and rows[0]["ctdna_detected"] is False
    # progression stored as the episode's object concept counts too; a narrow window leaves draws out
    done = _invoke(site_toml, "concordance", "--person", "4", "--window-days", "1", "--prior", "0.5")
    assert done.exit_code == 0, done.output
    assert "progression" in done.output and "no ctDNA draw in window" in done.output
    entries = AuditLog.for_config(load_config(site_toml)).entries()
    assert [e["local_command"] for e in entries] == ["concordance", "concordance"] and entries[0]["person_id"] == 6
    assert _invoke(site_toml, "concordance", "--person", "MRN999").exit_code != 0
    bad = _invoke(site_toml, "concordance", "--person", "6", "--prior", "1.5")
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output


def _model(tmp_path, **changes):
    model = {"format": "radfed.cox-model/1", "name": "progression tv-Cox", "covariates": ["age", TF, SUV],
             "coef": {"age": 0.01, TF: 1.5, SUV: 0.2},
             "variables": {"age": VARS["age"], TF: VARS[TF], SUV: VARS[SUV]},
             "baseline": {"times": [10, 50, 100], "cumhaz": [0.1, 0.3, 0.6]}, **changes}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


def test_forecast_command_uses_latest_values(site_toml, tmp_path):
    png = tmp_path / "curve.png"
    done = _invoke(site_toml, "forecast", "--person", "MRN006", "--model", str(_model(tmp_path)), "--at", "2021-01-01",
                   "--horizon", "5", "--horizon", "60", "--horizon", "200", "--json", "--plot", str(png))
    assert done.exit_code == 0, done.output
    report = json.loads(done.output.split("curve written")[0])
    tf_latest, suv_latest = tf_draws(6)[-1][1], suv_scans(6)[-1][1]
    assert report["covariates"] == {"age": 2021 - 1956, TF: pytest.approx(tf_latest), SUV: pytest.approx(suv_latest)}
    lp = 0.01 * 65 + 1.5 * tf_latest + 0.2 * suv_latest
    assert [h["survival"] for h in report["horizons"]] == [1.0, pytest.approx(np.exp(-0.3 * np.exp(lp))), None]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # as of a day before the scans, the person has no SUV yet: a clear error, nothing invented
    early = _invoke(site_toml, "forecast", "--person", "6", "--model", str(_model(tmp_path)), "--at", "2019-06-01")
    assert early.exit_code == 1 and "no value" in early.output and SUV in early.output
    broken = _invoke(site_toml, "forecast", "--person", "6", "--model",
                     str(_model(tmp_path, baseline={"times": [10, 5], "cumhaz": [0.1, 0.2]})))
    assert broken.exit_code == 2 and "non-decreasing" in broken.output
    missing = _invoke(site_toml, "forecast", "--person", "6", "--model", str(_model(tmp_path, coef={"age": 1.0})))
    assert missing.exit_code == 2 and "need both a coef" in missing.output


def test_pooled_rule_counts_like_brute_force():
    from cdm.analyses.cox import _pooled_problems

    rng = np.random.default_rng(3)
    start = rng.integers(0, 5, 60).astype(float)
    stop = start + rng.integers(1, 6, 60)
    event = rng.integers(0, 2, 60)
    times = np.unique(np.concatenate([start, stop]))
    bad = 0
    for t in times:
        counts = [((start < t) & (t <= stop)).sum(), ((stop == t) & (event == 1)).sum(), (stop == t).sum(),
                  ((start == t) & (start > 0)).sum()]
        bad += any(0 < c < 4 for c in counts)
    assert _pooled_problems(start, stop, event, 4) == bad > 0
    assert _pooled_problems(start, stop, event, 1) == 0


# -- the synthetic generator's export, through the real FHIR ingest ------------------------------------


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory):
    from cdm.db import create_cdm, open_engine
    from node.ingest.engine import ingest_paths
    from node.synth import SynthOptions, generate

    out = tmp_path_factory.mktemp("synth-rounds")
    generate(out / "synth", SynthOptions(sites=1, patients=40, seed=3, dicom=False))
    engine = open_engine(out / "cdm.sqlite")
    create_cdm(engine, source_name="site-1")
    ingest_paths(engine, [out / "synth" / "site-1" / "fhir"])
    yield engine
    engine.dispose()


def test_rounds_on_ingested_synthetic_site(synthetic_site, tmp_path):
    engine = synthetic_site
    cohort = {"index": {"kind": "observation_start"}}
    spec = parse_spec({"cohort": cohort, "analysis": {"type": "km_round", "time": PROG}})
    survival = compile_survival(spec, spec.analysis.time, [], engine)
    op, ep, ct = tables["observation_period"], tables["episode"], tables["ctdna_result"]
    with engine.connect() as conn:
        starts = dict(conn.execute(select(op.c.person_id, func.min(op.c.observation_period_start_date))
                                   .group_by(op.c.person_id)).all())
        progression = conn.execute(select(ep.c.person_id, ep.c.episode_start_date)
                                   .where(ep.c.episode_concept_id == conformance.PROGRESSION)).all()
        draws = conn.execute(select(ct.c.person_id, ct.c.result_date, ct.c.detected).where(ct.c.detected.isnot(None))
                             .order_by(ct.c.result_date, ct.c.ctdna_result_id)).all()
    progressed = {pid for pid, day in progression if day > starts[pid]}
    assert progressed and set(survival.person_id[survival.event == 1].tolist()) == progressed
    config = site_config(tmp_path, min_cell_count=1, rows_per_parameter=1, min_rows_model=5, differencing_k=0)
    policy = Policy.from_config(config)
    km = _site(spec, policy, engine, "site-1")
    assert sum(km["groups"]["all"]["events"]) == len(progressed)
    # concordance: imaging = any progression episode; ctDNA = the last draw on or after index
    last_call = {pid: bool(det) for pid, day, det in draws if day >= starts[pid]}
    imaging = {pid for pid, _ in progression}
    expected = [[sum(1 for p, d in last_call.items() if (p in imaging) == im and d == c) for c in (True, False)]
                for im in (True, False)]
    variables = {"imaging": {"kind": "episode", "codes": ["RADFED:progression"]},
                 "ctdna_pos": {"kind": "ctdna", "field": "detected", "reduce": "last"}}
    conc = parse_spec({"cohort": cohort, "variables": variables, "analysis": _concordance()})
    r = run_request(engine, config, {"request_id": "s", "requester": "t", "spec": conc.model_dump(mode="json", by_alias=True)})
    assert r["status"] == "ok", r
    assert r["result"]["table"] == expected and r["result"]["n"] == len(last_call) > 0
    biopsies = tables["biopsy_location"]
    with engine.connect() as conn:
        labels = [h for (h,) in conn.execute(select(biopsies.c.habitat_label))]
    habitats = sorted(set(labels))
    hab = parse_spec({"cohort": cohort, "analysis": {"type": "habitat_round", "variant_type": "snv", "habitats": habitats,
                                                     "beta": [0.0] * len(habitats)}})
    try:
        result = _site(hab, policy, engine)
        assert result["n"] + sum(result["excluded"].values()) == len(labels)
    except Refusal as refused:  # too few located biopsies for this many habitats is a refusal, not a crash
        assert refused.code in ("MIN_ROWS", "MIN_CELL")
