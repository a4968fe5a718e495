"""The same rows in a SQLite and a PostgreSQL CDM give the same released results, spec by spec: every
criterion kind, windows, AND/OR/NOT, first/last index, and every node-side analysis (one-round and
round analyses).  Counts must be identical; floating sums may differ only in the last bits (SQL
aggregates add in their own order), so floats are compared to 1e-9 relative."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest
from sqlalchemy import insert

from cdm.schema import tables
from node.execute import FRAMES, run_request

D0 = dt.date(2019, 1, 1)
N = 400
PFA, PFB = 2000000700, 2000000701


def populate(engine, seed=11):
    rnd = random.Random(seed)
    rows = {t: [] for t in ("person", "condition_occurrence", "observation_period", "death", "episode", "measurement",
                            "ctdna_result", "image_occurrence", "image_feature", "variant_occurrence")}
    for i in range(1, N + 1):
        index = D0 + dt.timedelta(days=rnd.randint(0, 700))
        follow = rnd.randint(20, 1200)
        rows["person"].append(dict(person_id=i, gender_concept_id=rnd.choice((8507, 8532, 8551)),
                                   year_of_birth=rnd.randint(1940, 2012), month_of_birth=rnd.choice((None, 2, 6, 12)),
                                   day_of_birth=rnd.choice((None, 1, 15, 28)), race_concept_id=0, ethnicity_concept_id=0))
        for k in range(rnd.randint(1, 3)):  # first and last occurrence differ
            rows["condition_occurrence"].append(dict(
                condition_occurrence_id=10 * i + k, person_id=i, condition_concept_id=rnd.choice((PFA, PFA, PFB)),
                condition_start_date=index + dt.timedelta(days=90 * k), condition_type_concept_id=0))
        rows["observation_period"].append(dict(observation_period_id=i, person_id=i, period_type_concept_id=0,
                                               observation_period_start_date=index - dt.timedelta(days=30),
                                               observation_period_end_date=index + dt.timedelta(days=follow)))
        if rnd.random() < 0.35:
            rows["death"].append(dict(person_id=i, death_date=index + dt.timedelta(days=rnd.randint(1, follow))))
        if rnd.random() < 0.5:
            rows["episode"].append(dict(episode_id=i, person_id=i, episode_concept_id=2000000400,
                                        episode_object_concept_id=PFA, episode_type_concept_id=0,
                                        episode_start_date=index + dt.timedelta(days=rnd.randint(1, follow))))
        for k in range(rnd.randint(0, 3)):
            rows["measurement"].append(dict(measurement_id=10 * i + k, person_id=i, measurement_concept_id=2000000200,
                                            measurement_date=index + dt.timedelta(days=rnd.randint(-60, 400)),
                                            measurement_type_concept_id=0, value_as_number=round(rnd.random(), 6)))
        for k in range(rnd.randint(0, 3)):
            rows["ctdna_result"].append(dict(ctdna_result_id=10 * i + k, person_id=i, tumour_fraction=rnd.random() * 0.3,
                                             detected=rnd.random() < 0.4,
                                             result_date=index + dt.timedelta(days=rnd.randint(-20, 300))))
        for k in range(rnd.randint(0, 2)):
            rows["image_occurrence"].append(dict(image_occurrence_id=10 * i + k, person_id=i, modality_concept_id=0,
                                                 image_occurrence_date=index + dt.timedelta(days=rnd.randint(-10, 200)),
                                                 image_study_uid=f"1.{i}", image_series_uid=f"1.{i}.{k}",
                                                 modality_source_value=rnd.choice(("PT", "MR"))))
            rows["image_feature"].append(dict(image_feature_id=10 * i + k, person_id=i, image_occurrence_id=10 * i + k,
                                              image_feature_concept_id=2000000102, image_feature_source_value="suv_max",
                                              image_feature_type_concept_id=0, alg_system="test",
                                              roi_label=rnd.choice(("lesion", "node")), value_as_number=rnd.uniform(1, 15)))
        if rnd.random() < 0.4:
            rows["variant_occurrence"].append(dict(
                variant_occurrence_id=i, person_id=i, variant_date=index + dt.timedelta(days=rnd.randint(-30, 60)),
                target_gene1_symbol=rnd.choice(("MDM2", "TP53")), variant_type=rnd.choice(("cnv", "snv")),
                hgvs_p=rnd.choice(("p.R175H", None)), allele_frequency=round(rnd.random(), 3), is_ctdna=False))
    with engine.begin() as c:
        for table, values in rows.items():
            if values:
                c.execute(insert(tables[table]), values)


PFA_INDEX = {"index": {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]}}
VARIABLES = {
    "sex": {"kind": "sex"}, "age": {"kind": "age"}, "site": {"kind": "site"},
    "subtype": {"kind": "condition", "codes": {"PFA": "RADFED:ependymoma_pfa", "PFB": "RADFED:ependymoma_pfb"}},
    "tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "mean"},
    "tf_last": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "last", "window": {"start": 0}},
    "suv": {"kind": "image_feature", "code": "RADFED:suv_max", "reduce": "max", "modality": "PT"},
    "ctf": {"kind": "ctdna", "field": "tumour_fraction", "reduce": "first"},
    "ctpos": {"kind": "ctdna", "field": "detected", "reduce": "last"},
    "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"},
    "vaf": {"kind": "variant", "gene": "TP53", "field": "vaf", "reduce": "max"},
    "prog": {"kind": "episode", "codes": ["RADFED:progression"]},
}
COHORTS = {
    "index first": PFA_INDEX,
    "index last": {**PFA_INDEX, "occurrence": "last"},
    "age and sex": {**PFA_INDEX, "age": {"min": 10, "max": 60}, "sex": ["F", "O"]},
    "criteria": {**PFA_INDEX, "inclusion": [
        {"kind": "variant", "gene": "TP53", "vaf": {"min": 0.2}, "window": {"start": -30, "end": 30}},
        {"any": [{"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "value": {"max": 0.5}},
                 {"kind": "image_feature", "code": "RADFED:suv_max", "modality": "PT", "value": {"min": 8}},
                 {"kind": "ctdna", "detected": True}]}],
        "exclusion": [{"kind": "death", "window": {"end": 90}}]},
    "nested": {**PFA_INDEX, "inclusion": [{"all": [{"not": {"kind": "episode", "codes": ["RADFED:progression"]}},
                                                   {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"],
                                                    "min_count": 2},
                                                   {"kind": "age", "min": 5}]}]},
    "image roi and ctdna field": {**PFA_INDEX, "inclusion": [
        {"kind": "image_feature", "code": "RADFED:suv_max", "roi": "lesion"},
        {"kind": "ctdna", "field": "tumour_fraction", "value": {"min": 0.05}}]},
    "hgvs": {**PFA_INDEX, "inclusion": [{"kind": "variant", "hgvs": "p.R175H"}]},
}
ANALYSES = {
    "count": {"type": "count"},
    "crosstab": {"type": "crosstab", "by": ["sex", "subtype"]},
    "crosstab binned": {"type": "crosstab", "by": ["site", "age"], "bins": {"age": [0, 18, 40, 65, 120]}},
    "summary": {"type": "summary", "variables": ["tf", "tf_last", "suv", "ctf", "vaf", "age"]},
    "histogram": {"type": "histogram", "variable": "age", "edges": [0, 10, 20, 40, 80]},
    "quantile": {"type": "quantile_round", "variable": "tf", "thresholds": [0.25, 0.5, 0.75]},
    "crossprod": {"type": "crossprod", "variables": ["age", "tf", "mdm2"]},
    "km": {"type": "km_round", "time": {"event": {"kind": "death"}}, "group": "sex", "bin_days": 60},
    "cox": {"type": "cox_round", "time": {"event": {"kind": "death"}}, "covariates": ["age", "mdm2"],
            "beta": [0.01, 0.3], "ties": "efron"},
    "glm": {"type": "glm_round", "family": "binomial", "outcome": "prog", "covariates": ["age"], "beta": [0.0, 0.0]},
    "concordance": {"type": "concordance", "imaging": "prog", "ctdna": "ctpos", "imaging_sens": 0.8,
                    "imaging_spec": 0.9, "ctdna_sens": 0.7, "ctdna_spec": 0.95, "prior": 0.3},
}


def close(a, b, path="") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (path, a, b)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def backends(tmp_path_factory, pg_server_url):
    from cdm.db import create_cdm, drop_cdm, open_engine

    lite = open_engine(tmp_path_factory.mktemp("same") / "cdm.sqlite")
    pg = open_engine(pg_server_url)
    drop_cdm(pg)
    for engine in (lite, pg):
        create_cdm(engine, source_name="same")
        populate(engine)
    yield lite, pg
    drop_cdm(pg)
    pg.dispose()
    lite.dispose()


@pytest.mark.parametrize("cohort", list(COHORTS))
@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_sqlite_and_postgresql_release_the_same(backends, cohort, analysis):
    spec = {"cohort": COHORTS[cohort], "variables": VARIABLES, "analysis": ANALYSES[analysis]}
    lite, pg = (run_request(e, None, {"request_id": "x", "requester": "t", "spec": spec}) for e in backends)
    assert lite["status"] == pg["status"] and lite["code"] == pg["code"], (lite, pg)
    assert lite["warnings"] == pg["warnings"]
    close(lite["result"], pg["result"])
    if cohort == "index first" and analysis in ("count", "summary", "cox"):
        assert lite["status"] == "ok", lite  # the battery is not all refusals


def test_the_cohorts_are_not_trivial(backends):
    lite = backends[0]
    FRAMES.clear()
    counts = {name: run_request(lite, None, {"request_id": "x", "requester": "t", "spec": {
        "cohort": c, "analysis": {"type": "count"}}})["result"] for name, c in COHORTS.items()}
    sizes = {name: (r or {}).get("n") for name, r in counts.items()}
    assert len({n for n in sizes.values() if n}) >= 4, sizes  # different cohorts, mostly releasable
    assert sizes["index first"] > sizes["age and sex"] > 0
