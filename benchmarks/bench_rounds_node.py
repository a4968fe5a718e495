"""Latency of the node's round analyses (survival frames, counting-process intervals, biopsy frame).

    .venv/bin/python benchmarks/bench_rounds_node.py --n 5000 [--pg postgresql://postgres@127.0.0.1/db]

A synthetic CDM per backend (bulk Core inserts, then ANALYZE): per person an index condition, an
observation period, death (30%), a progression episode (50%, half stored as the episode concept and
half as its object concept), 6 ctDNA draws, 3 PET scans with SUVmax, 2 located biopsies with a
specimen and a variant.  Each spec runs through ``node.execute.run_request`` with a permissive
policy (so every round computes and releases), best of 3.
"""

import argparse
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from cdm.db import create_cdm, drop_cdm, open_engine
from cdm.schema import tables

COHORT = {"index": {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]}}
VARS = {"age": {"kind": "age"}, "sex": {"kind": "sex"},
        "tf": {"kind": "ctdna", "field": "tumour_fraction", "time_varying": True, "window": {"start": -30}},
        "suv": {"kind": "image_feature", "code": "RADFED:suv_max", "time_varying": True, "window": {"start": -30}},
        "imaging": {"kind": "episode", "codes": ["RADFED:progression"]},
        "ctdna_pos": {"kind": "ctdna", "field": "detected", "reduce": "last"}}
PROG = {"event": {"kind": "episode", "code": "RADFED:progression"}}
SPECS = {
    "km_round by sex (death)": {"type": "km_round", "time": {"event": {"kind": "death"}}, "group": "sex", "bin_days": 30},
    "cox_round age (static)": {"type": "cox_round", "time": PROG, "covariates": ["age"], "beta": [0.0]},
    "cox_round age+tf+suv (time-varying)": {"type": "cox_round", "time": PROG, "covariates": ["age", "tf", "suv"],
                                            "beta": [0.0, 0.0, 0.0], "time_varying": True},
    "glm_round binomial": {"type": "glm_round", "family": "binomial", "outcome": "imaging", "covariates": ["age"],
                           "beta": [0.0, 0.0]},
    "concordance": {"type": "concordance", "imaging": "imaging", "ctdna": "ctdna_pos", "imaging_sens": 0.8,
                    "imaging_spec": 0.9, "ctdna_sens": 0.7, "ctdna_spec": 0.95, "prior": 0.3},
    "habitat_round": {"type": "habitat_round", "gene": "TP53", "habitats": ["habitat_hypercellular", "habitat_necrotic"],
                      "beta": [0.0, 0.0]},
}


def populate(engine, n, seed=1):
    rnd = random.Random(seed)
    d0 = dt.date(2018, 1, 1)
    rows = {t: [] for t in ("person", "condition_occurrence", "observation_period", "death", "episode", "ctdna_result",
                            "image_occurrence", "image_feature", "specimen", "biopsy_location", "variant_occurrence")}
    for i in range(1, n + 1):
        idx = d0 + dt.timedelta(days=rnd.randint(0, 900))
        follow = rnd.randint(30, 1500)
        rows["person"].append(dict(person_id=i, gender_concept_id=rnd.choice((8507, 8532)),
                                   year_of_birth=rnd.randint(1930, 2005), race_concept_id=0, ethnicity_concept_id=0))
        rows["condition_occurrence"].append(dict(condition_occurrence_id=i, person_id=i, condition_concept_id=2000000700,
                                                 condition_start_date=idx, condition_type_concept_id=0))
        rows["observation_period"].append(dict(observation_period_id=i, person_id=i, period_type_concept_id=0,
                                               observation_period_start_date=idx,
                                               observation_period_end_date=idx + dt.timedelta(days=follow)))
        if rnd.random() < 0.3:
            rows["death"].append(dict(person_id=i, death_date=idx + dt.timedelta(days=rnd.randint(1, follow))))
        if rnd.random() < 0.5:
            concept, obj = (2000000400, 2000000700) if rnd.random() < 0.5 else (32531, 2000000400)
            rows["episode"].append(dict(episode_id=i, person_id=i, episode_concept_id=concept, episode_object_concept_id=obj,
                                        episode_type_concept_id=0, episode_start_date=idx + dt.timedelta(days=rnd.randint(1, follow))))
        for k in range(6):
            rows["ctdna_result"].append(dict(ctdna_result_id=10 * i + k, person_id=i, tumour_fraction=rnd.random() * 0.3,
                                             detected=rnd.random() < 0.4,
                                             result_date=idx + dt.timedelta(days=rnd.randint(-20, follow))))
        for k in range(3):
            rows["image_occurrence"].append(dict(image_occurrence_id=10 * i + k, person_id=i, modality_concept_id=0,
                                                 image_occurrence_date=idx + dt.timedelta(days=rnd.randint(-20, follow)),
                                                 image_study_uid=f"1.{i}", image_series_uid=f"1.{i}.{k}", modality_source_value="PT"))
            rows["image_feature"].append(dict(image_feature_id=10 * i + k, person_id=i, image_occurrence_id=10 * i + k,
                                              image_feature_concept_id=2000000102, image_feature_source_value="suv_max",
                                              image_feature_type_concept_id=0, alg_system="bench", value_as_number=rnd.uniform(1, 15)))
        for k in range(2):
            sid = 10 * i + k
            rows["specimen"].append(dict(specimen_id=sid, person_id=i, specimen_concept_id=0, specimen_type_concept_id=0,
                                         specimen_date=idx))
            rows["biopsy_location"].append(dict(biopsy_location_id=sid, person_id=i, specimen_id=sid, x_mm=0.0, y_mm=0.0,
                                                z_mm=0.0, registration_error_mm=rnd.uniform(0.5, 3),
                                                habitat_label=rnd.choice(("habitat_hypercellular", "habitat_necrotic")),
                                                distance_to_border_mm=rnd.uniform(0, 8)))
            rows["variant_occurrence"].append(dict(variant_occurrence_id=sid, person_id=i, specimen_id=sid, variant_date=idx,
                                                   target_gene1_symbol=rnd.choice(("TP53", "KRAS")), variant_type="snv",
                                                   is_ctdna=False))
    with engine.begin() as c:
        for table, values in rows.items():
            for lo in range(0, len(values), 20000):
                c.execute(insert(tables[table]), values[lo:lo + 20000])


def bench(engine, label, n, config):
    from node.execute import run_request

    t = time.perf_counter()
    populate(engine, n)
    with engine.begin() as c:
        c.exec_driver_sql("ANALYZE")
    print(f"{label}: loaded {n} persons in {time.perf_counter() - t:.1f}s")
    for name, analysis in SPECS.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            r = run_request(engine, config, {"request_id": "b", "requester": "bench",
                                             "spec": {"cohort": COHORT, "variables": VARS, "analysis": analysis}})
            best = min(best, time.perf_counter() - t)
        assert r["status"] == "ok", r
        extra = f"  ({r['result']['intervals']} intervals)" if "intervals" in r["result"] else ""
        print(f"  {label:10s} {name:38s} {best * 1000:8.0f} ms{extra}")


def main():
    from node.config import NodeConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--pg")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # min_cell_count 1: every round releases (pooled-Cox refusal is not what is timed here)
        config = NodeConfig(Path(tmp) / "node.toml", {"policy": {"min_cell_count": 1, "differencing_k": 0}})
        engine = open_engine(Path(tmp) / "bench.sqlite")
        create_cdm(engine)
        bench(engine, "sqlite", args.n, config)
        if args.pg:
            engine = open_engine(args.pg)
            drop_cdm(engine)
            create_cdm(engine)
            bench(engine, "postgresql", args.n, config)
            drop_cdm(engine)


if __name__ == "__main__":
    main()
