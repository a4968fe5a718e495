"""Federation latency: a federated count over 3 real nodes through the coordinator vs the same spec run
locally on one node, and fan-out to many node agents on one machine.

    .venv/bin/python benchmarks/bench_federation.py [--persons 100000] [--runs 50] [--agents 100]

Part 1 builds three SQLite CDMs of ``--persons`` each (rows written with SQLAlchemy Core: the benchmark
measures querying, not ingest), starts nats-server + ``radfed coordinator serve`` + three ``radfed-node
serve`` processes, and times ``POST /v1/jobs`` (wait for the result) end to end: HTTP, job store, signed
request over NATS, node execution (policy, SQL, disclosure, audit), signed reply, verification, pooling.
Next to it: ``node.execute.run_request`` on one of the same CDMs, in process, same spec.  Part 1
runs twice (``--cache both``, the default): with the nodes' frame cache off (every request reads the
CDM: ``three_nodes_cold``) and on (a repeat over the unchanged CDM reuses the cohort frame:
``three_nodes``).

Part 2 enrolls ``--agents`` sites and runs that many real bus agents (:class:`node.bus_handler.Agent`: own
NATS credentials, signature checks, signed replies) in a few worker processes; their execution layer
is a constant answer so that the measurement is the fan-out itself (transport, signing, verification,
job store, aggregation), not 100 copies of SQLite competing for 2 cores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import cli_options  # noqa: E402
from cdm.db import open_engine  # noqa: E402
from federation import Network  # noqa: E402

SPEC_FILE = REPO / "benchmarks" / "federation_count_spec.json"
BENCH_CODE = "443487006"  # the condition half of each site's persons have; the count spec names it


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5), 2), "p95_ms": round(percentile(values, 0.95), 2),
            "min_ms": round(min(values), 2), "max_ms": round(max(values), 2)}


# ---------------------------------------------------------------------------- data


def fill_persons(engine, site: str, persons: int, offset: int) -> None:
    """``persons`` people, half with a condition in the count spec's code, deterministic."""
    from cdm.schema import metadata

    person = metadata.tables["person"]
    period = metadata.tables["observation_period"]
    condition = metadata.tables["condition_occurrence"]
    from cdm.vocabulary import Vocabulary

    concept_id = Vocabulary(engine).concept_for("SNOMED", BENCH_CODE, "bench condition", "Condition").concept_id
    batch = 20_000
    for start in range(0, persons, batch):
        ids = range(offset + start, offset + min(start + batch, persons))
        with engine.begin() as conn:
            conn.execute(insert(person), [
                {"person_id": i, "gender_concept_id": 8507 if i % 2 else 8532, "year_of_birth": 1940 + i % 70,
                 "race_concept_id": 0, "ethnicity_concept_id": 0, "person_source_value": f"{site}-{i}"} for i in ids])
            conn.execute(insert(period), [
                {"observation_period_id": i, "person_id": i, "observation_period_start_date": dt.date(2015, 1, 1),
                 "observation_period_end_date": dt.date(2024, 12, 31), "period_type_concept_id": 32817} for i in ids])
            conn.execute(insert(condition), [
                {"condition_occurrence_id": i, "person_id": i, "condition_concept_id": concept_id,
                 "condition_start_date": dt.date(2018, 1 + i % 12, 1 + i % 28), "condition_type_concept_id": 32817}
                for i in ids if i % 2 == 0])


# ---------------------------------------------------------------------------- part 1


def part_three_nodes(root: Path, persons: int, runs: int, spec: dict, frame_cache: bool = True) -> dict:
    """``frame_cache=False`` writes ``[query] frame_cache = false`` into every node.toml: each request
    then reads the CDM again (the cold figure); with it, repeats of the spec reuse the cohort frame
    while the CDM is unchanged (node.execute.FrameCache) and still pass every policy check."""
    net = Network(root, ["site-a", "site-b", "site-c"], heartbeat=2.0)
    if not frame_cache:
        for bundle in net.bundles.values():
            bundle.node_toml.write_text(bundle.node_toml.read_text() + "\n[query]\nframe_cache = false\n")
    print(f"frame cache {'on' if frame_cache else 'off'}", flush=True)
    print(f"building 3 CDMs x {persons:,} persons ...", flush=True)
    started = time.perf_counter()
    for i, site in enumerate(net.site_names):
        net.make_cdm(site, lambda engine, s, i=i: fill_persons(engine, s, persons, i * 10_000_000))
    print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)

    # the same spec locally, in process, on site-a's CDM
    from node.config import load_config
    from node.execute import run_request

    config = load_config(net.bundles["site-a"].node_toml, str(net.dbs["site-a"]))
    engine = open_engine(net.dbs["site-a"])
    local = []
    answer = None
    for i in range(runs + 3):
        request = {"request_id": f"local-{i}", "job_id": "bench", "requester": "bench-local", "spec": spec}
        t0 = time.perf_counter()
        answer = run_request(engine, config, request)
        if i >= 3:
            local.append(1000 * (time.perf_counter() - t0))
    print(f"  local: {answer.get('status')} {answer.get('result')}", flush=True)

    net.start_coordinator()
    try:
        for site in net.site_names:
            net.start_node(site, wait=False)
        net.wait_online(net.site_names, timeout=120)
        client = httpx.Client(base_url=net.api, headers={"Authorization": f"Bearer {net.token}"}, timeout=120)
        federated = []
        job = None
        for i in range(runs + 3):
            t0 = time.perf_counter()
            job = client.post("/v1/jobs", json={"spec": spec, "wait": 60, "timeout": 60}).json()
            if i >= 3:
                federated.append(1000 * (time.perf_counter() - t0))
        print(f"  federated: {job['status']} {job['message']}; pooled "
              f"{json.dumps(job['pooled']['rows'][0]['pooled']) if job.get('pooled') else None}", flush=True)
    finally:
        net.close()
    per_site = {r["site"]: r.get("elapsed_ms") for r in job.get("per_site", [])}
    return {"persons_per_site": persons, "frame_cache": frame_cache, "local_one_node": stats(local),
            "federated_3_nodes": stats(federated), "job_status": job["status"], "local_status": answer.get("status"),
            "last_job_site_round_trip_ms": per_site}


# ---------------------------------------------------------------------------- part 2


def swarm_worker(bundle_dirs: list[str]) -> None:
    """Run one Agent per bundle in this process until stdin closes."""
    from node.bus_handler import Agent
    from node.bus_connection import bus_settings
    from node.config import load_config

    async def main():
        agents = []
        for folder in bundle_dirs:
            settings = bus_settings(load_config(Path(folder) / "node.toml"))
            site = settings.site
            agents.append(Agent(settings, lambda request, site=site: {
                "request_id": request["request_id"], "site": site, "status": "ok", "code": None, "message": "",
                "result": {"n": 1000}}, quiet=True))
        tasks = [asyncio.ensure_future(a.run()) for a in agents]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), stop.set)
        await stop.wait()
        for a in agents:
            a.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def part_fanout(root: Path, agents: int, runs: int, workers: int) -> dict:
    names = [f"agent-{i:03d}" for i in range(agents)]
    print(f"enrolling {agents} sites ...", flush=True)
    net = Network(root, names, heartbeat=5.0)
    net.start_coordinator()
    procs = []
    try:
        chunks = [names[i::workers] for i in range(workers)]
        for chunk in chunks:
            procs.append(subprocess.Popen([sys.executable, __file__, "--swarm-worker",
                                           *[str(net.bundles[n].folder) for n in chunk]],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL))
        t0 = time.perf_counter()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            online = sum(s["online"] for s in net.call("GET", "/v1/sites").json()["sites"])
            if online == agents:
                break
            time.sleep(0.5)
        print(f"  {online}/{agents} agents online after {time.perf_counter() - t0:.1f} s", flush=True)
        client = httpx.Client(base_url=net.api, headers={"Authorization": f"Bearer {net.token}"}, timeout=120)
        spec = {"cohort": {}, "analysis": {"type": "count"}}
        timings, job = [], None
        for i in range(runs + 2):
            t0 = time.perf_counter()
            job = client.post("/v1/jobs", json={"spec": spec, "wait": 60, "timeout": 30}).json()
            if i >= 2:
                timings.append(1000 * (time.perf_counter() - t0))
        pooled = job["pooled"]["rows"][0]["pooled"]["n"] if job.get("pooled") else None
        print(f"  fan-out to {agents}: {job['status']}, pooled n = {pooled}", flush=True)
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(30)
        net.close()
    return {"agents": agents, "worker_processes": workers, "federated_count": stats(timings),
            "job_status": job["status"], "pooled_n": pooled}


def main() -> None:
    parser = cli_options.parser(__doc__, "federation.json", persons=100_000, runs=50, agents=100, workers=4,
                                skip_nodes=False)
    parser.add_argument("--cache", choices=("both", "on", "off"), default="both",
                        help="node frame cache for part 1: run with it off (cold), on (warm), or both")
    parser.add_argument("--swarm-worker", nargs="*")
    args = parser.parse_args()
    if args.swarm_worker is not None:
        swarm_worker(args.swarm_worker)
        return
    spec = json.loads(SPEC_FILE.read_text())
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "load_average_at_start": os.getloadavg()},
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "spec": spec}
    with tempfile.TemporaryDirectory(prefix="radfed-bench-") as tmp:
        if not args.skip_nodes:
            modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.cache]
            for on in modes:
                results["three_nodes" + ("" if on else "_cold")] = part_three_nodes(
                    Path(tmp) / f"three-{'warm' if on else 'cold'}", args.persons, args.runs, spec, on)
        if args.agents:
            results["fanout"] = part_fanout(Path(tmp) / "fanout", args.agents, args.runs, args.workers)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
