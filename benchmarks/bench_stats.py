"""Federated statistics: seconds and rounds per algorithm over simulated sites (issue 8).

    .venv/bin/python benchmarks/bench_stats.py [--sites 10] [--persons 50000] [--reference]

Each site holds ``--persons`` simulated persons (integer-day survival times up to 10 years with a
planted Cox model, 5 covariates, a binary outcome with a planted logistic model) and answers each
round in process through the :mod:`cdm.rounds` kernels, its result JSON-encoded and decoded with
orjson as on the bus (cdm/wire.py); the coordinator algorithm is the real :func:`coordinator.stats.run_analysis`.  Sites run
one after another here: "serial" is all sites' work plus the coordinator's; "parallel" is the
coordinator's work plus, per round, the slowest site (what a network whose sites answer concurrently
waits for, bus latency excluded); "coordinator" is the pooling and Newton steps alone; "parallel CPU"
is the parallel figure in CPU seconds of this process, which other jobs on the machine do not inflate.  ``--reference`` also fits lifelines ``CoxPHFitter`` on the
pooled rows and prints the largest relative difference of the coefficients.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson

from cdm import rounds
from coordinator.stats import run_analysis

BETA = np.array([0.5, -0.3, 0.2, 0.0, 0.8])
TIME = {"event": {"kind": "death"}}


def make_site(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(size=n), rng.normal(size=n), rng.uniform(0, 2, n), rng.normal(size=n),
                         rng.integers(0, 2, n)])
    hazard = 1 / 1500 * np.exp(X @ BETA)
    event_time = np.ceil(rng.exponential(1 / hazard))
    censor = rng.integers(30, 3650, n)
    time_ = np.minimum(event_time, censor).astype(float)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(-0.5 + X[:, :3] @ np.array([0.4, -0.2, 0.3]))))).astype(float)
    return {"X": X, "time": time_, "event": (event_time <= censor).astype(int), "y": y,
            "names": ["x1", "x2", "x3", "x4", "x5"]}


class Bus:
    """Counts rounds and bytes; answers from every site through the kernels."""

    def __init__(self, sites):
        self.sites, self.rounds, self.bytes = sites, 0, 0
        self.site_seconds: list[list[float]] = []  # per round, per site: kernel + encode + decode (wall)
        self.site_cpu: list[list[float]] = []  # the same in CPU seconds (robust to other load)

    def answer(self, site, a):
        X = site["X"]
        if a["type"] == "cox_round":
            kernel = rounds.cox_stratified if a["mode"] == "stratified" else rounds.cox_risk_sums
            return kernel(None, site["time"], site["event"], X, a["beta"], a["ties"])
        if a["type"] == "km_round":
            return rounds.km_counts(site["time"], site["event"], a["bin_days"], X[:, 4] if a.get("group") else None)
        if a["type"] == "glm_round":
            design = np.column_stack([np.ones(len(X)), X])
            return rounds.glm_binomial(site["y"], design, a["beta"])
        if a["type"] == "quantile_round":
            x = np.sort(site["time"])
            return {"n": len(x), "n_le": np.searchsorted(x, a["thresholds"], side="right").tolist()}
        if a["type"] == "crossprod":
            return {"n": len(X), "sums": X.sum(axis=0).tolist(), "cross": (X.T @ X).tolist()}
        raise ValueError(a["type"])

    def __call__(self, analysis):
        self.rounds += 1
        out, seconds, cpu = [], [], []
        for i, site in enumerate(self.sites):
            t0, c0 = time.perf_counter(), time.process_time()
            payload = orjson.dumps(self.answer(site, analysis))  # the bus encodes with orjson (cdm/wire.py)
            self.bytes += len(payload)
            out.append({**orjson.loads(payload), "_site": f"site-{i}"})
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        self.site_seconds.append(seconds)
        self.site_cpu.append(cpu)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--persons", type=int, default=50_000)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    sites = [make_site(args.persons, seed) for seed in range(args.sites)]
    print(f"{args.sites} sites x {args.persons:,} persons built in {time.perf_counter() - started:.1f} s")
    names = sites[0]["names"]
    analyses = {
        "cox pooled efron": {"type": "cox", "time": TIME, "covariates": names, "ties": "efron", "mode": "pooled"},
        "cox pooled breslow": {"type": "cox", "time": TIME, "covariates": names, "ties": "breslow", "mode": "pooled"},
        "cox stratified efron": {"type": "cox", "time": TIME, "covariates": names, "ties": "efron", "mode": "stratified"},
        "km by x5 (30-day bins)": {"type": "km", "time": TIME, "group": "x5", "bin_days": 30},
        "logistic (5 covariates)": {"type": "glm", "family": "binomial", "outcome": "y", "covariates": names},
        "median + quartiles of time": {"type": "quantile", "variable": "time", "probs": [0.25, 0.5, 0.75]},
        "correlation (5 variables)": {"type": "correlation", "variables": names},
    }
    print("| analysis | rounds | serial s | parallel s | coordinator s | parallel CPU s | MB from sites | note |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|")
    fits = {}
    for label, analysis in analyses.items():
        bus = Bus(sites)
        t0, c0 = time.perf_counter(), time.process_time()
        result = run_analysis(analysis, bus)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        fits[label] = result
        note = ""
        if result["type"] == "cox":
            coef = np.array([r["coef"] for r in result["coefficients"]])
            note = f"coef {np.round(coef, 3).tolist()} (planted {BETA.tolist()})"
        site_total = sum(map(sum, bus.site_seconds))
        coordinator = seconds - site_total
        parallel = coordinator + sum(map(max, bus.site_seconds))  # sites answer a round concurrently
        parallel_cpu = cpu - sum(map(sum, bus.site_cpu)) + sum(map(max, bus.site_cpu))
        print(f"| {label} | {bus.rounds} | {seconds:.2f} | {parallel:.2f} | {coordinator:.2f} | {parallel_cpu:.2f} | "
              f"{bus.bytes / 1e6:.1f} | {note} |")
    if args.reference:
        import pandas as pd
        from lifelines import CoxPHFitter

        frame = pd.concat([pd.DataFrame(s["X"], columns=names).assign(time=s["time"], event=s["event"]) for s in sites])
        t0 = time.perf_counter()
        ref = CoxPHFitter().fit(frame, "time", "event")
        ours = np.array([r["coef"] for r in fits["cox pooled efron"]["coefficients"]])
        diff = np.max(np.abs(ours - ref.params_[names].to_numpy()))
        print(f"lifelines CoxPHFitter on the pooled {len(frame):,} rows: {time.perf_counter() - t0:.1f} s; "
              f"max absolute difference of coefficients {diff:.2e}")


if __name__ == "__main__":
    main()
