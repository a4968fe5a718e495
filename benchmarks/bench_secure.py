"""Secure against plain aggregation in one run (issue 17): wall time and bytes on the wire.

    .venv/bin/python benchmarks/bench_secure.py [--count-persons 100000] [--runs 20]
                                                [--sites 10] [--persons 50000] [--skip-count] [--skip-cox]

Part 1, the federated count: three SQLite CDMs of ``--count-persons`` each (bench_federation.py's
persons), nats-server + ``radfed coordinator serve`` + three ``radfed-node serve`` processes, and
``POST /v1/jobs`` (wait for the result) timed end to end, secure and plain jobs alternating
(``federation: {secure: true|false}``).  Bytes: the signed request and response of one site for each
mode (``node.execute.run_request`` in process on one of the CDMs, sealed as on the bus).

Part 2, Cox over ``--sites`` x ``--persons`` (bench_stats.py's simulated sites, planted model, 5
covariates, integer days over 10 years): the real :func:`coordinator.stats.run_analysis` with sites
answering in process, plain (bench_stats' ``Bus``) and secure (each site computes its sums on the
shared grid, masks them with real X25519/HKDF/ChaCha20 pairwise masks against every other site, and
the coordinator unmasks with :func:`coordinator.secure.combine`).  "parallel" = the coordinator's work
plus the slowest site per round (sites answer concurrently; bus latency excluded), as in bench_stats.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import cli_options  # noqa: E402
from bench_stats import TIME, Bus, make_site  # noqa: E402

from cdm import rounds, secagg  # noqa: E402
from coordinator.secure import check_pooled, combine, km_groups  # noqa: E402
from coordinator.stats import run_analysis  # noqa: E402
from node.secure import km_sums  # noqa: E402


class SecureBus(Bus):
    """Every site answers with a masked share on the shared grid; the coordinator sums the shares."""

    secure = True
    carries_extra = True

    def __init__(self, sites):
        super().__init__(sites)
        self.keys = {f"site-{i:02d}": secagg.generate_key() for i in range(len(sites))}
        self.peers = {name: secagg.public_text(key) for name, key in self.keys.items()}

    def summed(self, site, a, extra) -> dict:
        if a["type"] == "km_round":
            out = km_sums(site["time"], site["event"], a["bin_days"], 3660)
            return {f"groups/all/{k}": v for k, v in out.items()}
        if a["mode"] == "stratified":
            fit = rounds.cox_stratified(None, site["time"], site["event"], site["X"], a["beta"], a["ties"])
            return {k: fit[k] for k in ("n", "events", "loglik", "gradient", "hessian")}
        sums = rounds.cox_risk_sums(None, site["time"], site["event"], site["X"], a["beta"], a["ties"],
                                    times=extra["grid"])
        keys = ["d", "sum_x_events", "s0", "s1", "s2"] + (["s0_ties", "s1_ties", "s2_ties"] if a["ties"] == "efron" else [])
        return {"n": sums["n"], "events": int(np.sum(site["event"])), **{k: sums[k] for k in keys}}

    def __call__(self, analysis, extra=None):
        extra = extra or {}
        self.rounds += 1
        peers = secagg.Peers(f"bench/round-{self.rounds}/attempt-1", self.peers)
        public = {"times": list(range(1, 3661)), "labels": ["all"], "horizon": 3660, "bin_days": 1} \
            if analysis["type"] == "km_round" else {"times": extra["grid"]} if "grid" in extra else {}
        results, seconds, cpu = {}, [], []
        for (name, key), site in zip(self.keys.items(), self.sites):
            t0, c0 = time.perf_counter(), time.process_time()
            summed = self.summed(site, analysis, extra)
            layout, parts = [], []
            for k, v in summed.items():
                array = np.asarray(v, dtype=float)
                layout.append([k, list(array.shape)])
                parts.append(array.ravel())
            vector = np.concatenate(parts)
            share = secagg.mask(vector, name, key, peers, {"spec": analysis, **extra})
            payload = orjson.dumps({**public, "secure": {"session": peers.session, "layout": layout, "size": vector.size,
                                                         "share": secagg.to_text(share),
                                                         "policy": {"min_cell_count": 5, "min_rows_model": 20,
                                                                    "rows_per_parameter": 10}}})
            self.bytes += len(payload)
            results[name] = orjson.loads(payload)
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        self.site_seconds.append(seconds)
        self.site_cpu.append(cpu)
        pooled = combine(results, peers.session)
        if analysis["type"] == "km_round":
            pooled = km_groups(pooled)
        return [{**check_pooled(analysis, pooled), "_site": "pooled"}]


def part_cox(n_sites: int, persons: int) -> list[dict]:
    started = time.perf_counter()
    sites = [make_site(persons, seed) for seed in range(n_sites)]
    print(f"{n_sites} sites x {persons:,} persons built in {time.perf_counter() - started:.1f} s")
    names = sites[0]["names"]
    rows = []
    for ties in ("efron", "breslow"):
        for mode in ("pooled", "stratified"):
            analysis = {"type": "cox", "time": TIME, "covariates": names, "ties": ties, "mode": mode}
            coefs = {}
            for label, bus in (("plain", Bus(sites)), ("secure", SecureBus(sites))):
                t0, c0 = time.perf_counter(), time.process_time()
                result = run_analysis(analysis, bus)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                site_total = sum(map(sum, bus.site_seconds))
                parallel = wall - site_total + sum(map(max, bus.site_seconds))
                parallel_cpu = cpu - sum(map(sum, bus.site_cpu)) + sum(map(max, bus.site_cpu))
                coefs[label] = np.array([r["coef"] for r in result["coefficients"]])
                rows.append({"analysis": f"cox {mode} {ties}", "mode": label, "rounds": bus.rounds,
                             "serial_s": round(wall, 2), "parallel_s": round(parallel, 2),
                             "parallel_cpu_s": round(parallel_cpu, 2), "mb_from_sites": round(bus.bytes / 1e6, 1)})
                print(json.dumps(rows[-1]))
            rel = float(np.max(np.abs(coefs["secure"] - coefs["plain"]) / np.maximum(np.abs(coefs["plain"]), 1e-12)))
            rows[-1]["max_rel_diff_vs_plain"] = rel
            print(f"  secure vs plain coefficients: max relative difference {rel:.2e}")
    return rows


def part_count(persons: int, runs: int) -> dict:
    from bench_federation import SPEC_FILE, fill_persons
    from federation import Network

    from cdm.db import open_engine
    from cdm.wire import Signer, generate_key
    from node.config import load_config
    from node.execute import run_request

    spec = json.loads(SPEC_FILE.read_text())
    root = Path(tempfile.mkdtemp(prefix="bench-secure-"))
    sites = ["site-a", "site-b", "site-c"]
    t0 = time.perf_counter()
    net = Network(root, sites)
    for i, site in enumerate(sites):
        net.make_cdm(site, lambda engine, s, i=i: fill_persons(engine, s, persons, i * persons))
    print(f"3 CDMs x {persons:,} persons built in {time.perf_counter() - t0:.0f} s")
    net.start_coordinator()
    for site in sites:
        net.start_node(site, wait=False)
    net.wait_online(sites)
    try:
        times = {"secure": [], "plain": []}
        answers = {}
        for k in range(runs + 1):
            for mode in ("secure", "plain"):
                t = time.perf_counter()
                job = net.run({**spec, "federation": {"secure": mode == "secure"}})
                elapsed = 1000 * (time.perf_counter() - t)
                assert job["status"] == "done", job["message"]
                answers[mode] = job["pooled"]["rows"][0]["pooled"]["n"]
                if k:  # the first pair warms the nodes' frame caches
                    times[mode].append(elapsed)
        assert answers["secure"] == answers["plain"], answers
        # bytes: one site's signed request and response for each mode, in process on its CDM
        config = load_config(net.bundles["site-a"].node_toml, db=f"sqlite:///{net.dbs['site-a']}")
        engine = open_engine(f"sqlite:///{net.dbs['site-a']}")
        seal = Signer("x", generate_key()).seal
        beats = {s["name"]: s.get("heartbeat") or {} for s in net.home.store.sites()}
        peers = {s: beats[s]["secagg"]["certificate"] for s in sites}
        size = {}
        for mode in ("secure", "plain"):
            request = {"request_id": f"bench-{mode}", "job_id": "bench", "requester": "bench", "spec": spec}
            if mode == "secure":
                request["secure"] = {"protocol": secagg.PROTOCOL, "session": "bench/round-1/attempt-1", "peers": peers}
            response = run_request(engine, config, request)
            assert response["status"] == "ok", response
            size[mode] = {"request_bytes": len(seal(request)), "response_bytes": len(seal(response))}
        out = {"persons_per_site": persons, "runs": runs, "n": answers["secure"]}
        for mode in ("secure", "plain"):
            ordered = sorted(times[mode])
            out[mode] = {"p50_ms": round(ordered[len(ordered) // 2], 1), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
                         **size[mode]}
        print(json.dumps(out))
        return out
    finally:
        net.close()


def main() -> None:
    args = cli_options.parser(__doc__, "secure.json", count_persons=100_000, runs=20, sites=10, persons=50_000,
                              skip_count=False, skip_cox=False).parse_args()
    import os

    record = {"load_average_start": os.getloadavg()}
    if not args.skip_count:
        record["count"] = part_count(args.count_persons, args.runs)
    if not args.skip_cox:
        record["cox"] = part_cox(args.sites, args.persons)
    record["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"written to {args.out}; load average {record['load_average_start']} -> {record['load_average_end']}")


if __name__ == "__main__":
    main()
