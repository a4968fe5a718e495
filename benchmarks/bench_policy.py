"""What the node's disclosure-control hooks cost per request (approval queue, privacy budget, noise).

    .venv/bin/python benchmarks/bench_policy.py [--n 10000] [--runs 30]

One SQLite CDM (bench_query.populate), a real node.toml per configuration in a temporary folder,
the same crosstab through node.execute.run_request ``--runs`` times each; p50/p95 in ms. The hooks
alone (approvals.check on an approved request, noise.check_budget + noise.charge, noise.privatize)
are timed separately on the same state database, and the linked-release audit's solver
(node.disclosure.policy.recoverable_cells) on growing synthetic histories.  BLAS runs single-threaded (set
OPENBLAS_NUM_THREADS to override): on a loaded 2-core machine its threads made the solver 10-100x
slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # 2 shared cores: BLAS threads only fight each other

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_query import SPECS, populate

from cdm.db import create_cdm, open_engine
from cdm.spec import parse_spec
from node import state
from node.disclosure import approvals, noise
from node.config import load_config
from node.execute import run_request
from node.disclosure.policy import Policy, Refusal, recoverable_cells

CONFIGS = {
    "defaults (suppression, linked-release audit, differencing, rate limit, audit log)": "",
    "+ approval (already approved)": '[policy]\napproval = "all"\n',
    "+ laplace noise and budget": '[policy.noise]\nmechanism = "laplace"\nepsilon_per_query = 0.001\n'
                                  'budget_per_requester = 1000\n',
}


def _ms(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1000, samples[int(0.95 * (len(samples) - 1))] * 1000


def _time(fn, runs: int) -> tuple[float, float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return _ms(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    spec = SPECS["crosstab sex x mdm2"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = open_engine(root / "cdm.sqlite")
        create_cdm(engine, source_name="bench")
        populate(engine, args.n)
        print(f"crosstab sex x mdm2 over {args.n:,} persons, {args.runs} runs each\n")
        calls = {}
        for i, (name, policy) in enumerate(CONFIGS.items()):
            folder = root / f"site{i}"
            folder.mkdir()
            (folder / "node.toml").write_text(f'[site]\nname = "bench"\n{policy}')
            config = load_config(folder / "node.toml")
            request = {"request_id": "b", "requester": "bench", "spec": spec}
            if "approval" in policy:  # queue it once, approve it, then time the approved path
                run_request(engine, config, request)
                approvals.decide(state.state_engine(config), 1, "approved", None, "bench")
            calls[name] = (lambda config=config, request=request: run_request(engine, config, request))
        samples = {name: [] for name in calls}
        for _ in range(args.runs):  # interleaved, so load from other processes hits every configuration alike
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        print("| configuration | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, taken in samples.items():
            p50, p95 = _ms(taken)
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")

        config = load_config(root / "site2" / "node.toml")
        settings, state_db, parsed = noise.NoiseSettings.from_config(config), state.state_engine(config), parse_spec(spec)
        result = run_request(engine, load_config(root / "site0" / "node.toml"), {"requester": "x", "spec": spec})["result"]
        approved = load_config(root / "site1" / "node.toml")
        print("\n| hook alone | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, fn in (
            ("approvals.check (approved)", lambda: approvals.check(state.state_engine(approved), Policy.from_config(approved),
                                                                   "bench", parsed)),
            ("noise.check_budget + noise.charge", lambda: (noise.check_budget(state_db, "hook", settings),
                                                           noise.charge(state_db, "hook", settings))),
            ("noise.privatize (crosstab, 4 cells)", lambda: noise.privatize(parsed, result, {}, settings)),
        ):
            p50, p95 = _time(fn, args.runs * 3)
            print(f"| {name} | {p50:.2f} | {p95:.2f} |")

        _audit_scaling()


def _audit_scaling() -> None:
    """node.disclosure.policy.recoverable_cells alone, worst case: every earlier release is a crosstab of 20 cells
    over a *different random half* of the persons (so atoms approach persons), two cells small and
    suppressed.  Realistic histories (a few cohorts cross-classified by categorical variables) have
    few atoms and stay in the first rows."""
    recoverable_cells([np.arange(10)], [np.arange(2)], 5)  # load LAPACK once, outside the timings
    print("\n| persons | earlier releases | atoms | released cells | recoverable_cells ms |\n|---:|---:|---:|---:|---:|")
    for persons in (1_000, 10_000):
        rng = np.random.default_rng(1)
        released, hidden = [], []
        for history in (5, 10, 20, 40):
            while len(released) < history * 18:
                subset = rng.permutation(persons)[: persons // 2]
                hidden += [subset[:3], subset[3:7]]
                released += np.array_split(subset[7:], 18)
            t0 = time.perf_counter()
            try:
                recoverable_cells(released, hidden, 5)
                taken = f"{(time.perf_counter() - t0) * 1000:.0f}"
            except Refusal:
                taken = f"refused (over MAX_AUDIT_ENTRIES) after {(time.perf_counter() - t0) * 1000:.0f}"
            member = np.zeros((persons, len(released)), dtype=bool)
            for j, s in enumerate(released):
                member[s, j] = True
            atoms = len(np.unique(np.packbits(member, axis=1), axis=0))
            print(f"| {persons:,} | {history} | {atoms:,} | {len(released):,} | {taken} |")


if __name__ == "__main__":
    main()
