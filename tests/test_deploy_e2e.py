"""The deployment's own entry points, end to end, as processes on loopback.

Configs are derived from deploy/examples (only paths, ports and the bundle's values change); every
service command is read from its deploy/systemd unit (``ExecStartPre`` then ``ExecStart``) with the
install prefixes mapped into a temporary folder:  ``radfed coordinator config apply`` and nats-server
(radfed-nats.service, TLS + JetStream), ``radfed coordinator serve --config`` (radfed-coordinator.service,
job store on PostgreSQL), ``radfed-node ... config check`` / ``serve`` (radfed-node-agent.service, CDM on
PostgreSQL) and ``dicom listen`` (radfed-dicom-listener.service).  A researcher then runs the guide's
docs/examples/count.yaml through ``radfed query run``.  Then the training units: ``radfed coordinator
superlink`` (radfed-superlink.service) and, once the operator registered the site's key,
``radfed-node ... supernode`` (radfed-supernode.service), which must come online at the SuperLink."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from cdm.db import open_engine
from conftest import PG_ADMIN_URL
from coordinator.natsproc import free_ports, wait_for_port
from test_deploy import BIN, DEPLOY, REPO, local_argv, unit_commands
from test_e2e_federation import SITES, fill

SITE = "site-a"


def set_key(text: str, table: str, key: str, value) -> str:
    """``text`` (TOML) with ``key = ...`` of ``[table]`` replaced by ``value``; the key must be there."""
    lines = text.splitlines()
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("["):
            inside = line.strip() == f"[{table}]"
        elif inside and re.match(rf"{re.escape(key)} = ", line):
            lines[i] = f"{key} = {json.dumps(value)}"
            return "\n".join(lines) + "\n"
    raise AssertionError(f"[{table}] {key} not in the example")


def pg_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class Services:
    """The unit files' commands, run as processes with /etc/radfed and /var/lib/radfed under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = {"/etc/radfed/": root / "etc", "/var/lib/radfed/": root / "var"}
        self.procs: dict[str, subprocess.Popen] = {}

    def argv(self, unit: str, key: str) -> list[list[str]]:
        return [local_argv(argv, self.paths) for argv in unit_commands(DEPLOY / "systemd" / unit).get(key, [])]

    def start(self, unit: str) -> subprocess.Popen:
        for argv in self.argv(unit, "ExecStartPre"):
            pre = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert pre.returncode == 0, f"{unit} ExecStartPre {argv}: {pre.stdout}{pre.stderr}"
        (argv,) = self.argv(unit, "ExecStart")
        log = open(self.root / f"{unit}.log", "ab")
        self.procs[unit] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self.procs[unit]

    def log(self, unit: str) -> str:
        return (self.root / f"{unit}.log").read_text(errors="replace")

    def stop(self) -> None:
        for unit, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if "dicom" in unit else signal.SIGTERM)  # the units' KillSignal
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def coordinator_toml(var: Path, nats_port: int, api_port: int, database_url: str, flower_port: int = 9093) -> str:
    """deploy/examples/coordinator.toml with this machine's paths, loopback ports and job store."""
    text = (DEPLOY / "examples" / "coordinator.toml").read_text().replace("/var/lib/radfed/", f"{var}/")
    for table, key, value in [("nats", "host", "127.0.0.1"), ("nats", "port", nats_port),
                              ("nats", "public_url", f"tls://localhost:{nats_port}"),
                              ("nats", "external_url", f"tls://localhost:{nats_port}"),
                              ("nats", "tls_hosts", ["localhost", "127.0.0.1"]), ("api", "port", api_port),
                              ("api", "public_url", f"http://127.0.0.1:{api_port}"),
                              ("database", "url", database_url), ("flower", "host", "127.0.0.1"),
                              ("flower", "port", flower_port)]:
        text = set_key(text, table, key, value)
    return text


def node_toml(var: Path, bundle_toml: Path, database_url: str, dicom_port: int, move_port: int,
              superlink: str = "127.0.0.1:9093") -> str:
    """deploy/examples/node.toml with the bundle's values, this machine's paths, ports and CDM."""
    bus = tomllib.loads(bundle_toml.read_text())["bus"]
    text = (DEPLOY / "examples" / "node.toml").read_text().replace("/var/lib/radfed/", f"{var}/")
    for table, key, value in [("site", "name", tomllib.loads(bundle_toml.read_text())["site"]["name"]),
                              ("bus", "user", bus["user"]), ("database", "url", database_url),
                              ("bus", "url", bus["url"]), ("bus", "coordinator_key", bus["coordinator_key"]),
                              ("bus", "heartbeat_seconds", 1), ("dicom", "host", "127.0.0.1"),
                              ("dicom", "port", dicom_port), ("dicom", "move_port", move_port),
                              ("learning", "superlink", superlink)]:
        text = set_key(text, table, key, value)
    return text


def wait_for_api(api_port: int, services: "Services", timeout: float = 30) -> None:
    """Until the coordinator's API answers and says it is connected to its bus."""
    coordinator = services.procs["radfed-coordinator.service"]
    wait_for_port("127.0.0.1", api_port, timeout=timeout, process=coordinator)
    deadline = time.monotonic() + timeout
    while not httpx.get(f"http://127.0.0.1:{api_port}/v1/health").json().get("bus"):
        assert time.monotonic() < deadline, services.log("radfed-coordinator.service")
        time.sleep(0.1)


@pytest.fixture
def coordinator_db():
    name = f"radfed_deploy_{uuid.uuid4().hex[:10]}"
    url = pg_database(name)
    yield url
    drop_database(name)


def test_deployment_entrypoints_answer_a_count_query(tmp_path, pg_url, coordinator_db):
    root = tmp_path
    etc, var = root / "etc", root / "var"
    etc.mkdir()
    (var / "node").mkdir(parents=True)
    services = Services(root)
    nats_port, api_port, dicom_port, move_port, flower_port = free_ports(5)
    pgpass = etc / "pgpass"
    pgpass.write_text("127.0.0.1:5432:*:postgres:unused-with-trust-auth\n")
    pgpass.chmod(0o600)

    (etc / "coordinator.toml").write_text(coordinator_toml(var, nats_port, api_port, f"{coordinator_db}?passfile={pgpass}",
                                                           flower_port))
    home = var / "coordinator"

    try:
        # the bus: config apply (ExecStartPre) writes settings, TLS material and nats.conf; nats-server runs it
        services.start("radfed-nats.service")
        wait_for_port("127.0.0.1", nats_port, timeout=20, process=services.procs["radfed-nats.service"])
        conf = (home / "nats.conf").read_text()
        assert "tls {" in conf and "jetstream {" in conf and (home / "tls" / "ca.pem").exists()
        assert (home / "nats.pid").read_text().strip() == str(services.procs["radfed-nats.service"].pid)

        services.start("radfed-coordinator.service")
        wait_for_api(api_port, services)

        # operator: enroll the site (nats-server reloads through nats.pid), add a researcher
        enrolled = run([str(BIN / "radfed"), "coordinator", "enroll-site", "--home", str(home),
                        "--out", str(root / "bundles"), SITE])
        assert enrolled.returncode == 0, enrolled.stderr
        shutil.copytree(root / "bundles" / SITE, etc / "bundle")     # the site unpacks the bundle
        token = run([str(BIN / "radfed"), "coordinator", "add-researcher", "--home", str(home), "alice"]).stdout.strip()
        assert token.startswith("rf_")
        bundle = tomllib.loads((etc / "bundle" / "node.toml").read_text())
        assert bundle["bus"]["durable"] is True and bundle["bus"]["tls_ca"] == "ca.pem"
        (etc / "node.toml").write_text(node_toml(var, etc / "bundle" / "node.toml", f"{pg_url}?passfile={pgpass}",
                                                 dicom_port, move_port, f"127.0.0.1:{flower_port}"))
        node = [str(BIN / "radfed-node"), "--config", str(etc / "node.toml")]
        initialised = run(node + ["init"])                        # the compose `init` service
        assert initialised.returncode == 0, initialised.stderr
        engine = open_engine(pg_url)
        fill(engine, SITE)
        engine.dispose()

        agent = services.start("radfed-node-agent.service")
        listener = services.start("radfed-dicom-listener.service")
        wait_for_port("127.0.0.1", dicom_port, timeout=30, process=listener)
        from pynetdicom import AE

        pacs = AE(ae_title="PACS")
        pacs.add_requested_context("1.2.840.10008.1.1")  # Verification: C-ECHO, as a PACS tests a destination
        association = pacs.associate("127.0.0.1", dicom_port, ae_title="RADFED")
        assert association.is_established
        assert association.send_c_echo().Status == 0x0000
        association.release()

        env = {**os.environ, "RADFED_URL": f"http://127.0.0.1:{api_port}", "RADFED_TOKEN": token}
        deadline = time.monotonic() + 30
        while True:
            sites = json.loads(run([str(BIN / "radfed"), "sites", "--json"], env=env).stdout or "[]")
            if any(s["site"] == SITE and s["online"] for s in sites):
                break
            assert agent.poll() is None, services.log("radfed-node-agent.service")
            assert time.monotonic() < deadline, sites
            time.sleep(0.2)

        # researcher: the guide's count example, through the CLI
        query = run([str(BIN / "radfed"), "query", "run", str(REPO / "docs" / "examples" / "count.yaml"), "--json"],
                    env=env)
        assert query.returncode == 0, query.stdout + query.stderr
        job = json.loads(query.stdout)
        per_site = {s["site"]: s for s in job["per_site"]}
        assert per_site[SITE]["status"] == "ok", per_site
        assert per_site[SITE]["result"]["n"] == SITES[SITE], per_site
        assert job["pooled"]["rows"][0]["pooled"]["n"] == SITES[SITE], job["pooled"]
        assert f"connected to tls://localhost:{nats_port}" in services.log("radfed-node-agent.service")

        # training: the SuperLink unit (TLS from the bus's CA, node auth, --database), the site's key
        # registered by the operator, the SuperNode unit connecting out to it
        superlink = services.start("radfed-superlink.service")
        wait_for_port("127.0.0.1", flower_port, timeout=60, process=superlink)
        assert (home / "flower").is_dir()
        key = run(node + ["flower-key"])
        assert key.returncode == 0, key.stderr
        registered = run([str(BIN / "radfed"), "flower-register", "--home", str(home), key.stdout.strip(), SITE])
        assert registered.returncode == 0, registered.stdout + registered.stderr
        supernode = services.start("radfed-supernode.service")
        from coordinator.home import CoordinatorHome
        from coordinator.learn.superlink import CONNECTION, FlowerLink

        link = FlowerLink.for_home(CoordinatorHome(home))
        assert link.address == f"127.0.0.1:{flower_port}"
        deadline = time.monotonic() + 60
        while True:
            nodes = link.flwr("supernode", "list", CONNECTION)["nodes"]
            if any(n["status"] == "online" for n in nodes):
                break
            assert supernode.poll() is None and superlink.poll() is None, services.log("radfed-supernode.service")
            assert time.monotonic() < deadline, (nodes, services.log("radfed-supernode.service"))
            time.sleep(0.5)
        assert len(nodes) == 1 and (home / "flower" / "superlink.db").exists()
        shim = var / "node" / "flower" / "bin" / "flwr-clientapp"   # the FAB pin the SuperExec will start
        assert "node.learn.fabpin" in shim.read_text()
    finally:
        services.stop()
    # the listener stopped cleanly on the unit's KillSignal and reported what it received
    assert "received 0 instances" in services.log("radfed-dicom-listener.service")
