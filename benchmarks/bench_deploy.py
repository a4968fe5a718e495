"""Deployment timings: how long the deploy/systemd entry points take to come up, answer, and rotate a key.

Runs the units' own command lines (``ExecStartPre`` + ``ExecStart`` from deploy/systemd, install prefixes
mapped into a temporary folder, as tests/test_deploy_e2e.py does) on free loopback ports, with the
example configs (TLS and JetStream on; job store and CDMs on SQLite here so the figures need no
PostgreSQL), three sites from tests/test_e2e_federation.py's fill.  Measures:

* bus start: ``radfed coordinator config apply`` + nats-server listening;
* coordinator start: ``radfed coordinator serve --config`` until ``/v1/health`` reports the bus;
* enroll-site (CLI, includes the bus reload) per site;
* node agent start until its first verified heartbeat (site online);
* a federated count over all sites through the API (``POST /v1/jobs`` with ``wait``), ``--runs`` times;
* rotate-site-key (CLI) for one site; until the bus refuses its old connection; the site's agent with the
  new bundle until online again; a count over the other sites meanwhile;
* the training units: ``radfed coordinator superlink`` (radfed-superlink.service) until its port
  listens; per site ``flower-key`` + ``radfed flower-register`` (CLI); ``radfed-node ... supernode``
  (radfed-supernode.service) until the SuperLink lists the site's SuperNode online.

``.venv/bin/python benchmarks/bench_deploy.py [--runs 30]``; results in benchmarks/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cdm.db import open_engine  # noqa: E402
from coordinator.natsproc import free_port, free_ports, wait_for_port  # noqa: E402
from test_deploy import BIN  # noqa: E402
from test_deploy_e2e import Services, coordinator_toml, node_toml, run, set_key, wait_for_api  # noqa: E402
from test_e2e_federation import COUNT, fill  # noqa: E402

SITES = ["site-a", "site-b", "site-c"]
ANSWERED = {"ok", "refused"}   # site-c holds 3 matching persons: a signed MIN_CELL refusal is its answer


def until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` is true (polling every 20 ms)."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter() - started


class Bench:
    def __init__(self, root: Path):
        self.root = root
        self.coordinator = Services(root / "coordinator")
        (root / "coordinator" / "etc").mkdir(parents=True)
        self.home = root / "coordinator" / "var" / "coordinator"
        self.nats_port, self.api_port, self.flower_port = free_ports(3)
        self.sites: dict[str, Services] = {}
        self.token = ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def online(self, site: str, since: float) -> bool:
        sites = httpx.get(f"{self.api}/v1/sites", headers={"Authorization": f"Bearer {self.token}"}).json()["sites"]
        return any(s["site"] == site and s["online"] and (s.get("last_seen") or 0) >= since for s in sites)

    def count(self, sites: list[str] | None = None) -> tuple[float, dict]:
        started = time.perf_counter()
        job = httpx.post(f"{self.api}/v1/jobs", headers={"Authorization": f"Bearer {self.token}"}, timeout=120,
                         json={"spec": COUNT, "wait": 60, **({"sites": sites} if sites else {})}).json()
        return 1000 * (time.perf_counter() - started), job

    def start_coordinator(self) -> dict:
        var = self.root / "coordinator" / "var"
        (self.root / "coordinator" / "etc" / "coordinator.toml").write_text(
            coordinator_toml(var, self.nats_port, self.api_port, str(self.home / "jobs.sqlite"), self.flower_port))
        started = time.perf_counter()
        self.coordinator.start("radfed-nats.service")
        wait_for_port("127.0.0.1", self.nats_port, timeout=60, process=self.coordinator.procs["radfed-nats.service"])
        bus = time.perf_counter() - started
        started = time.perf_counter()
        self.coordinator.start("radfed-coordinator.service")
        wait_for_api(self.api_port, self.coordinator, timeout=60)
        return {"bus_start_s": bus, "coordinator_start_s": time.perf_counter() - started}

    def install_site(self, site: str, bundle: Path) -> None:
        root = self.root / site
        etc, var = root / "etc", root / "var"
        shutil.rmtree(etc / "bundle", ignore_errors=True)
        shutil.copytree(bundle, etc / "bundle")
        (var / "node").mkdir(parents=True, exist_ok=True)
        text = node_toml(var, etc / "bundle" / "node.toml", str(var / "node" / "cdm.sqlite"), *free_ports(2),
                         f"127.0.0.1:{self.flower_port}")
        # three sites on one host: each SuperNode's loopback runtime API needs its own port
        (etc / "node.toml").write_text(set_key(text, "learning", "runtime_port", free_port()))

    def enroll(self, site: str, out: Path) -> float:
        started = time.perf_counter()
        enrolled = run([str(BIN / "radfed"), "coordinator", "enroll-site", "--home", str(self.home), "--out", str(out), site])
        assert enrolled.returncode == 0, enrolled.stderr
        return time.perf_counter() - started

    def start_agent(self, site: str) -> float:
        services = self.sites.setdefault(site, Services(self.root / site))
        since = time.time()
        started = time.perf_counter()
        services.start("radfed-node-agent.service")
        until(lambda: self.online(site, since - 0.5), 60, f"{site} online")
        return time.perf_counter() - started

    def supernodes_online(self) -> int:
        from coordinator.home import CoordinatorHome
        from coordinator.learn.superlink import CONNECTION, FlowerLink

        nodes = FlowerLink.for_home(CoordinatorHome(self.home)).flwr("supernode", "list", CONNECTION)["nodes"]
        return sum(1 for n in nodes if n["status"] == "online")

    def start_flower(self) -> dict:
        started = time.perf_counter()
        superlink = self.coordinator.start("radfed-superlink.service")
        wait_for_port("127.0.0.1", self.flower_port, timeout=60, process=superlink)
        figures = {"superlink_start_s": time.perf_counter() - started}
        register, online = [], []
        for site in SITES:
            node = [str(BIN / "radfed-node"), "--config", str(self.root / site / "etc" / "node.toml")]
            started = time.perf_counter()
            key = run(node + ["flower-key"]).stdout.strip()
            registered = run([str(BIN / "radfed"), "flower-register", "--home", str(self.home), key, site])
            assert registered.returncode == 0, registered.stdout + registered.stderr
            register.append(time.perf_counter() - started)
            before = self.supernodes_online()
            started = time.perf_counter()
            self.sites[site].start("radfed-supernode.service")
            online.append(until(lambda: self.supernodes_online() > before, 90, f"{site} SuperNode online"))
        return figures | {"flower_register_s": statistics.mean(register), "supernode_online_s": statistics.mean(online)}

    def stop(self) -> None:
        for services in self.sites.values():
            services.stop()
        self.coordinator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deploy.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radfed-bench-deploy-") as tmp:
        bench = Bench(Path(tmp))
        try:
            figures = bench.start_coordinator()
            bench.token = run([str(BIN / "radfed"), "coordinator", "add-researcher", "--home", str(bench.home),
                               "alice"]).stdout.strip()
            enroll, online = [], []
            for site in SITES:
                enroll.append(bench.enroll(site, bench.root / "bundles"))
                bench.install_site(site, bench.root / "bundles" / site)
                node = [str(BIN / "radfed-node"), "--config", str(bench.root / site / "etc" / "node.toml")]
                assert run(node + ["init"]).returncode == 0
                engine = open_engine(bench.root / site / "var" / "node" / "cdm.sqlite")
                fill(engine, site)
                engine.dispose()
            for site in SITES:
                online.append(bench.start_agent(site))
            figures |= {"enroll_site_s": statistics.mean(enroll), "agent_online_s": statistics.mean(online)}

            latencies = []
            for _ in range(args.runs):
                ms, job = bench.count()
                assert {s["status"] for s in job["per_site"]} <= ANSWERED, job
                latencies.append(ms)
            latencies.sort()
            figures |= {"count_runs": args.runs, "count_p50_ms": statistics.median(latencies),
                        "count_p95_ms": latencies[int(0.95 * (len(latencies) - 1))], "count_min_ms": latencies[0]}

            # rotation of site-a: the others keep answering throughout
            started = time.perf_counter()
            rotated = run([str(BIN / "radfed"), "coordinator", "rotate-site-key", "--home", str(bench.home),
                           "--out", str(bench.root / "rotated"), "site-a"])
            assert rotated.returncode == 0, rotated.stderr
            figures["rotate_cmd_s"] = time.perf_counter() - started
            log = bench.root / "site-a" / "radfed-node-agent.service.log"
            figures["old_credentials_refused_s"] = figures["rotate_cmd_s"] + until(
                lambda: "Authorization Violation" in log.read_text(errors="replace"), 30, "the old connection refused")
            ms, job = bench.count(["site-b", "site-c"])
            assert {s["status"] for s in job["per_site"]} <= ANSWERED, job
            figures["count_others_during_rotation_ms"] = ms
            bench.sites["site-a"].stop()
            bench.install_site("site-a", bench.root / "rotated" / "site-a")
            figures["rotated_agent_online_s"] = bench.start_agent("site-a")
            ms, job = bench.count()
            assert {s["status"] for s in job["per_site"]} <= ANSWERED, job
            figures |= bench.start_flower()
        finally:
            bench.stop()
    record = {"recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "sites": len(SITES),
              "tls": True, "jetstream": True, "figures": {k: round(v, 3) for k, v in figures.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
