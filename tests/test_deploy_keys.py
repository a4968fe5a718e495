"""Key tooling: enroll-site writes one self-contained bundle; rotate-site-key replaces one site's key and
bus password while the other sites keep answering (real nats-server, coordinator and node processes)."""

from __future__ import annotations

import subprocess
import time
import tomllib

import pytest

from federation import BIN, Network
from test_e2e_federation import COUNT, fill

BUNDLE_FILES = {"site.key", "site.pub", "bus.password", "coordinator.pub", "node.toml", "README.txt"}


def radfed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "radfed"), *args], capture_output=True, text=True, timeout=120)


def statuses(job: dict) -> dict[str, str]:
    return {s["site"]: s["status"] for s in job["per_site"]}


@pytest.fixture
def network(tmp_path):
    net = Network.started(tmp_path, ["site-a", "site-b"], fill)
    yield net
    net.close()


def test_enroll_site_writes_one_bundle_a_node_starts_from(tmp_path):
    home = tmp_path / "coord"
    assert radfed("coordinator", "init", "--home", str(home)).returncode == 0
    assert radfed("coordinator", "tls-init", "--home", str(home)).returncode == 0
    enrolled = radfed("coordinator", "enroll-site", "--home", str(home), "--out", str(tmp_path / "out"), "site-x")
    assert enrolled.returncode == 0, enrolled.stderr
    folder = tmp_path / "out" / "site-x"
    assert {p.name for p in folder.iterdir()} == BUNDLE_FILES | {"ca.pem"}
    assert (folder / "site.key").stat().st_mode & 0o077 == 0 and (folder / "bus.password").stat().st_mode & 0o077 == 0
    bus = tomllib.loads((folder / "node.toml").read_text())["bus"]
    assert bus["url"].startswith("tls://") and all((folder / bus[k]).exists() for k in ("signing_key", "tls_ca"))
    check = subprocess.run([str(BIN / "radfed-node"), "--config", str(folder / "node.toml"), "config", "check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr       # the bundle alone is a valid node.toml
    again = radfed("coordinator", "enroll-site", "--home", str(home), "--out", str(tmp_path / "other"), "site-x")
    assert again.returncode == 2 and "already enrolled" in again.stderr


def test_rotating_one_site_key_leaves_the_other_sites_working(network, tmp_path):
    assert set(statuses(network.run(COUNT)).values()) == {"ok"}
    home = str(network.home.path)
    old_key = network.home.store.public_keys()["site-a"]
    old_bundle = network.bundles["site-a"].folder

    # refused rotations change nothing: unknown site, bundle folder already in use
    unknown = radfed("coordinator", "rotate-site-key", "--home", home, "--out", str(tmp_path / "r"), "site-z")
    assert unknown.returncode == 2 and "no enrolled site 'site-z'" in unknown.stderr
    busy = radfed("coordinator", "rotate-site-key", "--home", home, "--out", str(old_bundle.parent), "site-a")
    assert busy.returncode == 2 and "already exists" in busy.stderr
    assert network.home.store.public_keys()["site-a"] == old_key

    rotated = radfed("coordinator", "rotate-site-key", "--home", home, "--out", str(tmp_path / "rotated"), "site-a")
    assert rotated.returncode == 0, rotated.stderr
    new_bundle = tmp_path / "rotated" / "site-a"
    assert network.home.store.public_keys()["site-a"] != old_key
    assert (new_bundle / "site.pub").read_text() != (old_bundle / "site.pub").read_text()
    assert (new_bundle / "bus.password").read_text() != (old_bundle / "bus.password").read_text()

    # the old credentials are dead (the bus drops the connection on reload); site-b never noticed
    for _attempt in range(3):  # site-b may still be reconnecting after the bus reload (load-dependent)
        job = network.run(COUNT, timeout=15)
        if statuses(job)["site-b"] == "ok":
            break
    assert statuses(job)["site-b"] == "ok" and statuses(job)["site-a"] != "ok", job
    assert network.nodes["site-b"].poll() is None
    deadline = time.monotonic() + 10
    while "Authorization Violation" not in (network.root / "site-a.log").read_text():
        assert time.monotonic() < deadline, "the old site-a connection was never refused by the bus"
        time.sleep(0.2)

    # the site installs its new bundle and restarts its agent: the whole network answers again
    network.stop_node("site-a")
    (new_bundle / "node.toml").write_text((new_bundle / "node.toml").read_text()
                                          .replace("heartbeat_seconds = 5", f"heartbeat_seconds = {network.heartbeat}"))
    network.bundles["site-a"] = type(network.bundles["site-a"])("site-a", new_bundle, new_bundle / "node.toml")
    network.start_node("site-a")
    deadline = time.monotonic() + 30
    while set(statuses(job := network.run(COUNT)).values()) != {"ok"}:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["provenance"]["verified_with"]["site-a"] != old_key[:12]
