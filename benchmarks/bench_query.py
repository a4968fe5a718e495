"""Latency of typical specs on a synthetic CDM (SQLite and/or PostgreSQL).

    .venv/bin/python benchmarks/bench_query.py --n 100000 [--pg postgresql://postgres@127.0.0.1/db]

Rows are bulk-inserted with SQLAlchemy Core; each spec runs through node.execute.run_request
(compile -> SQL -> analysis -> disclosure control), best of 3.
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
from node.execute import run_request

SPECS = {
    "count, three criteria": {
        "cohort": {"index": {"kind": "condition", "codes": ["RADFED:progression"]}, "age": {"min": 30},
                   "inclusion": [{"kind": "variant", "gene": "MDM2", "variant_type": "cnv"},
                                 {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "value": {"min": 0.2}}]},
        "analysis": {"type": "count"}},
    "crosstab sex x mdm2": {
        "cohort": {"index": {"kind": "condition", "codes": ["RADFED:progression"]}},
        "variables": {"sex": {"kind": "sex"}, "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}},
        "analysis": {"type": "crosstab", "by": ["sex", "mdm2"]}},
    "summary tf": {
        "cohort": {"index": {"kind": "condition", "codes": ["RADFED:progression"]}},
        "variables": {"tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "mean"}},
        "analysis": {"type": "summary", "variables": ["tf"]}},
}


def populate(engine, n, seed=1):
    rnd = random.Random(seed)
    d0 = dt.date(2018, 1, 1)
    batch = 20000
    for lo in range(1, n + 1, batch):
        ids = range(lo, min(n, lo + batch - 1) + 1)
        with engine.begin() as c:
            c.execute(insert(tables["person"]), [dict(person_id=i, gender_concept_id=rnd.choice((8507, 8532)),
                      year_of_birth=rnd.randint(1930, 2005), race_concept_id=0, ethnicity_concept_id=0) for i in ids])
            c.execute(insert(tables["condition_occurrence"]), [dict(condition_occurrence_id=i, person_id=i,
                      condition_concept_id=2000000400, condition_start_date=d0 + dt.timedelta(days=rnd.randint(0, 900)),
                      condition_type_concept_id=0) for i in ids])
            c.execute(insert(tables["measurement"]), [dict(measurement_id=i, person_id=i, measurement_concept_id=2000000200,
                      measurement_date=d0 + dt.timedelta(days=rnd.randint(0, 1200)), measurement_type_concept_id=0,
                      value_as_number=rnd.random()) for i in ids])
            c.execute(insert(tables["variant_occurrence"]), [dict(variant_occurrence_id=i, person_id=i,
                      variant_date=d0, target_gene1_symbol=rnd.choice(("MDM2", "TP53", "CDK4")),
                      variant_type="cnv", is_ctdna=False) for i in ids if rnd.random() < 0.3])


def bench(engine, label, n):
    t = time.perf_counter()
    populate(engine, n)
    with engine.begin() as c:  # fresh statistics, as autovacuum / a site's nightly ANALYZE would give
        c.exec_driver_sql("ANALYZE")
    print(f"{label}: loaded {n} persons in {time.perf_counter() - t:.1f}s")
    for name, spec in SPECS.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            r = run_request(engine, None, {"request_id": "b", "requester": "bench", "spec": spec})
            best = min(best, time.perf_counter() - t)
        assert r["status"] == "ok", r
        print(f"  {label:10s} {name:24s} {best * 1000:8.0f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--pg")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(Path(tmp) / "bench.sqlite")
        create_cdm(engine)
        bench(engine, "sqlite", args.n)
    if args.pg:
        engine = open_engine(args.pg)
        drop_cdm(engine)
        create_cdm(engine)
        bench(engine, "postgresql", args.n)
        drop_cdm(engine)


if __name__ == "__main__":
    main()
