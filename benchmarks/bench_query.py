"""Latency of typical specs on a synthetic CDM (SQLite and/or PostgreSQL).

    .venv/bin/python benchmarks/bench_query.py --n 100000 [--pg postgresql://postgres@127.0.0.1/db]

Rows are bulk-inserted with SQLAlchemy Core; each spec runs through node.execute.run_request
(compile -> SQL -> analysis -> disclosure control), best of 3, first with the node's frame cache off
("cold": every request reads the CDM), then with it on ("warm": the CDM is unchanged, so a repeat
reuses the cohort frame and pays only for the analysis and the policy).  ``--plans`` prints each
spec's SQL with EXPLAIN QUERY PLAN (SQLite) / EXPLAIN ANALYZE (PostgreSQL).
"""

import argparse
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

import os

from sqlalchemy import insert

from cdm import spec as S
from cdm.compiler import Resolver, frame, tune_for_queries
from cdm.db import create_cdm, drop_cdm, open_engine
from cdm.schema import tables
from node import execute
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
    # one Newton round of a site-stratified Cox model (gradient + Hessian at beta): survival frame
    # (death, censored at the end of observation) + counting-process intervals + the kernel
    "cox gradient (age, mdm2, tf)": {
        "cohort": {"index": {"kind": "condition", "codes": ["RADFED:progression"]}},
        "variables": {"age": {"kind": "age"}, "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"},
                      "tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "mean"}},
        "analysis": {"type": "cox_round", "time": {"event": {"kind": "death"}}, "covariates": ["age", "mdm2", "tf"],
                     "beta": [0.01, 0.2, -0.5], "mode": "stratified", "ties": "efron"}},
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
            # follow-up for the Cox spec: observed to 2024 or death (about 30%) after the index window
            c.execute(insert(tables["observation_period"]), [dict(observation_period_id=i, person_id=i,
                      observation_period_start_date=d0, observation_period_end_date=dt.date(2024, 12, 31),
                      period_type_concept_id=0) for i in ids])
            c.execute(insert(tables["death"]), [dict(person_id=i, death_date=d0 + dt.timedelta(days=rnd.randint(901, 2500)))
                                                for i in ids if rnd.random() < 0.3])


def plan(engine, spec):
    """The cohort frame's SQL as run_request builds it, and the database's plan for it."""
    parsed = S.parse_spec(spec)
    names = [] if execute._own_frame(parsed) else list(
        dict.fromkeys(n for _, n in S.analysis_variables(parsed.analysis)))
    q = frame(parsed, names, Resolver(engine), index_date=False).query
    sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
    tune_for_queries(engine)
    with engine.connect() as c:
        lines = [" ".join(str(x) for x in (r[3:] if engine.dialect.name == "sqlite" else r))
                 for r in c.exec_driver_sql(explain + sql)]  # bench-only: the compiled query, EXPLAINed
    return sql, lines


def timed(engine, spec, runs=3):
    best, r = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        r = run_request(engine, None, {"request_id": "b", "requester": "bench", "spec": spec})
        best = min(best, time.perf_counter() - t)
    assert r["status"] == "ok", r
    return best


def bench(engine, label, n, show_plans=False):
    t = time.perf_counter()
    populate(engine, n)
    with engine.begin() as c:  # fresh statistics, as autovacuum / a site's nightly ANALYZE would give
        c.exec_driver_sql("ANALYZE")
    print(f"{label}: loaded {n} persons in {time.perf_counter() - t:.1f}s (load average {os.getloadavg()[0]:.2f})")
    out = {}
    for name, spec in SPECS.items():
        if show_plans:
            sql, lines = plan(engine, spec)
            print(f"\n{sql}\n  " + "\n  ".join(lines))
        cache = execute.FRAMES.max_cells
        execute.FRAMES.max_cells = 0  # cold: every request reads the CDM
        cold = timed(engine, spec)
        execute.FRAMES.max_cells = cache
        execute.FRAMES.clear()
        timed(engine, spec, 1)  # fills the cache
        warm = timed(engine, spec)
        out[name] = (cold, warm)
        print(f"  {label:10s} {name:30s} cold {cold * 1000:8.0f} ms   warm {warm * 1000:8.1f} ms", flush=True)
    print(f"  (load average {os.getloadavg()[0]:.2f})")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--pg")
    ap.add_argument("--plans", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(Path(tmp) / "bench.sqlite")
        create_cdm(engine)
        bench(engine, "sqlite", args.n, args.plans)
    if args.pg:
        engine = open_engine(args.pg)
        drop_cdm(engine)
        create_cdm(engine)
        bench(engine, "postgresql", args.n, args.plans)
        drop_cdm(engine)


if __name__ == "__main__":
    main()
