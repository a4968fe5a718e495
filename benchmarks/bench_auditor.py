"""The site-wide release auditor's cost as the release history grows (node/disclosure/auditor.py).

A site of N persons with three attributes (age, sex, a 5-level subtype, a measurement): H earlier
releases over cohorts a researcher would ask for (age ranges, a sex, a subtype, measurement ranges,
combinations: every release goes through check_and_commit, refused ones are not recorded), then the
time of one more audit of a count over all N persons, and of a count over a fresh cohort.

    python benchmarks/bench_auditor.py [--persons 100000] [--history 1000] [--out results/auditor.json]

``--against OLD.py`` (e.g. ``git show REV:node/disclosure/auditor.py > /tmp/old.py``) instead builds
the same history in both implementations and then times, interleaved on the same states (so that the
machine's load hits both alike), 60 more rounds of: a count over all persons, a new cohort (audit),
and check_and_commit of that cohort; medians in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from node.disclosure.auditor import ReleaseAuditor  # noqa: E402
from node.disclosure.policy import Refusal  # noqa: E402


def cohorts(n: int, rng, kind: str = "ranges"):
    """Cohort generator: ``ranges`` cuts age and the measurement at arbitrary points (atoms grow
    towards one per person: the hard case); ``bands`` uses 5-year age bands and quartiles of the
    measurement, as criteria written by hand usually are."""
    ids = np.arange(1_000_000, 1_000_000 + n, dtype=np.int64)
    age = rng.integers(0, 90, n)
    sex = rng.integers(0, 2, n)
    subtype = rng.integers(0, 5, n)
    value = rng.normal(1000, 200, n)

    def one():
        mask = np.ones(n, dtype=bool)
        for _ in range(rng.integers(1, 4)):
            what = rng.integers(0, 4)
            if what == 0 and kind == "bands":
                lo = 5 * rng.integers(0, 16)
                mask &= (age >= lo) & (age < lo + 5 * rng.integers(1, 8))
            elif what == 0:
                lo = rng.integers(0, 80)
                mask &= (age >= lo) & (age <= lo + rng.integers(5, 40))
            elif what == 1:
                mask &= sex == rng.integers(0, 2)
            elif what == 2:
                mask &= subtype == rng.integers(0, 5)
            elif kind == "bands":
                q = np.array([-np.inf, 865, 1000, 1135, np.inf])
                lo = rng.integers(0, 4)
                mask &= (value >= q[lo]) & (value < q[lo + rng.integers(1, 5 - lo)])
            else:
                lo = rng.normal(1000, 200)
                mask &= (value >= lo) & (value <= lo + abs(rng.normal(200, 100)))
        return ids[mask]
    return ids, one


def run(persons: int, history: int, checkpoints, kind: str) -> dict:
    rng = np.random.default_rng(16)
    ids, one = cohorts(persons, rng, kind)
    auditor = ReleaseAuditor(5)
    rows, refused, t_hist, exhausted = [], 0, [], None
    for i in range(1, history + 1):
        t0 = time.perf_counter()
        try:
            verdict = auditor.check_and_commit([one()])
            refused += not verdict.safe
        except Refusal:
            refused += 1
            exhausted = exhausted or i
        t_hist.append(1000 * (time.perf_counter() - t0))
        if i in checkpoints:
            t0 = time.perf_counter()
            auditor.audit([ids])
            full = 1000 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            auditor.audit([one()])
            fresh = 1000 * (time.perf_counter() - t0)
            rows.append({"history": i, "exhausted": exhausted, "rank": auditor.rank, "atoms": auditor.atoms,
                         "basis_mb": round(auditor.rank * auditor.atoms * 8 / 1e6, 1),
                         "audit_count_all_ms": round(full, 2), "audit_new_cohort_ms": round(fresh, 2),
                         "mean_release_ms_so_far": round(float(np.mean(t_hist)), 2), "refused_so_far": refused})
            print(json.dumps(rows[-1]), flush=True)
    return {"persons": persons, "history": history, "cohorts": kind, "rows": rows, "load_average": os.getloadavg()}


def compare(persons: int, history: int, kind: str, against: Path) -> dict:
    """The module docstring's ``--against``: both implementations on one history, interleaved."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("auditor_against", against)
    module = importlib.util.module_from_spec(spec)
    sys.modules["auditor_against"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    rng = np.random.default_rng(16)
    ids, one = cohorts(persons, rng, kind)
    past, more = [one() for _ in range(history)], [one() for _ in range(60)]
    auditors = {"against": module.ReleaseAuditor(5), "this": ReleaseAuditor(5)}
    for a in auditors.values():
        for cohort in past:
            try:
                a.check_and_commit([cohort])
            except Refusal:
                pass
    taken = {name: {"count_all": [], "new_cohort": [], "check_and_commit": []} for name in auditors}
    for cohort in more:
        for name, a in auditors.items():
            for what, fn in (("count_all", lambda: a.audit([ids])), ("new_cohort", lambda: a.audit([cohort])),
                             ("check_and_commit", lambda: a.check_and_commit([cohort]))):
                t0 = time.perf_counter()
                try:
                    fn()
                except Refusal:
                    pass
                taken[name][what].append(1000 * (time.perf_counter() - t0))
    a = auditors["this"]
    out = {"persons": persons, "history": history, "cohorts": kind, "rank": a.rank, "atoms": a.atoms,
           "same_span": bool(a.rank == auditors["against"].rank and a.atoms == auditors["against"].atoms),
           "load_average": os.getloadavg(),
           **{name: {what: round(float(np.median(v)), 2) for what, v in t.items()} for name, t in taken.items()}}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--cohorts", choices=("ranges", "bands"), default="ranges")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--against", type=Path)
    args = ap.parse_args()
    if args.against:
        result = compare(args.persons, args.history, args.cohorts, args.against)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
        raise SystemExit(0)
    marks = {h for h in (10, 100, 250, 500, 1000, 2000, 5000) if h <= args.history} | {args.history}
    result = run(args.persons, args.history, marks, args.cohorts)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
