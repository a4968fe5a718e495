"""A real federation for tests, the demo's way: nats-server, `radfed coordinator serve` and
`radfed-node serve` as separate processes on free loopback ports (never the system NATS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cdm.db import create_cdm, open_engine
from coordinator.home import CoordinatorHome
from coordinator.natsproc import free_coordinator_ports, wait_for_port

BIN = Path(sys.executable).parent


class Network:
    def __init__(self, root: Path, sites: list[str], heartbeat: float = 1.0, jetstream: bool = False):
        self.root = Path(root)
        self.site_names = list(sites)
        self.heartbeat = heartbeat
        self.home = CoordinatorHome(self.root / "coord").init(**free_coordinator_ports(),
                                                              jetstream=jetstream)
        self.bundles = {s: self.home.enroll_site(s, self.root / "bundles") for s in sites}
        self.token = self.home.store.add_researcher("alice", "researcher")
        self.admin_token = self.home.store.add_researcher("root", "admin")
        self.coordinator: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self.dbs: dict[str, Path] = {}
        for site, bundle in self.bundles.items():
            text = bundle.node_toml.read_text().replace("heartbeat_seconds = 5", f"heartbeat_seconds = {heartbeat}")
            bundle.node_toml.write_text(text)

    # ------------------------------------------------------------------ processes

    @classmethod
    def started(cls, root: Path, sites: list[str], fill=None) -> "Network":
        """A running network: one filled CDM and node agent per site, and the coordinator."""
        net = cls(root, sites)
        for site in sites:
            net.make_cdm(site, fill)
        net.start_coordinator()
        for site in sites:
            net.start_node(site, wait=False)
        net.wait_online(sites)
        return net

    @property
    def api(self) -> str:
        return self.home.api_url

    def env(self, **extra) -> dict:
        return {**os.environ, "RADFED_URL": self.api, "RADFED_TOKEN": self.token, **extra}

    def start_coordinator(self) -> None:
        log = open(self.root / "coordinator.log", "ab")
        self.coordinator = subprocess.Popen([str(BIN / "radfed"), "coordinator", "serve", "--home", str(self.home.path)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port("127.0.0.1", self.home.settings["api_port"], timeout=30, process=self.coordinator)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if httpx.get(f"{self.api}/v1/health").json().get("bus"):
                return
            time.sleep(0.1)
        raise RuntimeError("coordinator never connected to its bus")

    def stop_coordinator(self, sig=signal.SIGTERM) -> None:
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(sig)
            self.coordinator.wait(20)
        if sig == signal.SIGKILL:  # its nats-server child survives a SIGKILL of the coordinator
            pid_file = self.home.path / "nats.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
                except ProcessLookupError:
                    pass
                time.sleep(0.3)
                pid_file.unlink(missing_ok=True)

    def make_cdm(self, site: str, fill=None) -> Path:
        path = self.root / f"{site}.sqlite"
        engine = open_engine(path)
        create_cdm(engine, source_name=site)
        if fill is not None:
            fill(engine, site)
        engine.dispose()
        self.dbs[site] = path
        return path

    def start_node(self, site: str, wait: bool = True) -> subprocess.Popen:
        db = self.dbs.get(site) or self.make_cdm(site)
        log = open(self.root / f"{site}.log", "ab")
        proc = subprocess.Popen([str(BIN / "radfed-node"), "--config", str(self.bundles[site].node_toml), "--db", str(db),
                                 "serve"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.nodes[site] = proc
        if wait:
            self.wait_online([site])
        return proc

    def wait_online(self, sites: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        started = time.time()
        while time.monotonic() < deadline:
            seen = {s["site"]: s for s in self.call("GET", "/v1/sites").json()["sites"]}
            if all(seen.get(s, {}).get("last_seen") and seen[s]["last_seen"] >= started - 1 for s in sites):
                return
            for s in sites:
                if self.nodes[s].poll() is not None:
                    raise RuntimeError(f"node {s} exited: {(self.root / f'{s}.log').read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"sites {sites} never came online")

    def stop_node(self, site: str, sig=signal.SIGTERM) -> None:
        proc = self.nodes.get(site)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
                proc.wait(20)

    def close(self) -> None:
        for site, proc in self.nodes.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.nodes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.stop_coordinator()

    # ------------------------------------------------------------------ API

    def call(self, method: str, path: str, token: str | None = "default", **kwargs) -> httpx.Response:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.api}{path}", headers=headers, timeout=120, **kwargs)

    def submit(self, spec: dict, **options) -> str:
        """Submit without waiting for the result (the job is still open: 202); its job id."""
        response = self.call("POST", "/v1/jobs", json={"spec": spec, **options})
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def per_site(self, job_id: str, wait: float | None = None) -> tuple[dict, dict]:
        """(the job, each site's record in it by site name), waiting up to ``wait`` s for it to end."""
        job = self.call("GET", f"/v1/jobs/{job_id}", params={} if wait is None else {"wait": wait}).json()
        return job, {s["site"]: s for s in job["per_site"]}

    def run(self, spec: dict, **options) -> dict:
        response = self.call("POST", "/v1/jobs", json={"spec": spec, "wait": 60, **options})
        assert response.status_code in (200, 202), response.text
        job = response.json()
        while job["status"] in ("queued", "running"):
            job = self.call("GET", f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
        return job


def network_fixture(folder: str, sites, fill):
    """A module-scoped ``network`` fixture: :meth:`Network.started` with ``sites``, each CDM filled by
    ``fill``, in a fresh temporary ``folder``; closed when the module's tests are done."""
    @pytest.fixture(scope="module")
    def network(tmp_path_factory):
        net = Network.started(tmp_path_factory.mktemp(folder), list(sites), fill)
        yield net
        net.close()
    return network
