"""A real Flower deployment on loopback: SuperLink (TLS, SuperNode auth, --database) + 2 SuperNodes.

``radfed train``'s path end to end: the model spec goes to the SuperLink as our FAB, two registered
SuperNodes run our ClientApp against their own SQLite CDMs through the node's policy-checked data
path, and the stored model equals the pooled fit.

Tolerance: federated Newton (GLORE) reproduces the pooled Newton iterates exactly in exact
arithmetic, so after 3 rounds the coefficients equal the pooled fit's 3rd Newton iterate to 1e-10
(float64 rounding in the row-weighted average of the two sites' gradients and Hessians) and the
converged pooled MLE to 1e-2 (the 3rd iterate on this data is within 2e-3 of it; convergence to 1e-9
is checked on the in-process grid, tests/test_learn_local.py, where rounds are cheap).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from learn_sites import logistic_site, logistic_spec  # noqa: E402

from cdm.db import open_engine  # noqa: E402
from cdm.learn.modelspec import parse_model_spec  # noqa: E402
from cdm.learn.models import newton_fit  # noqa: E402
from cdm.learn.process import Supervised, flower_env  # noqa: E402
from cdm.listening import wait_listening  # noqa: E402
from cdm.learn.bundle import installed_fab_hash, write_app  # noqa: E402
from coordinator.learn import runner  # noqa: E402
from coordinator.learn.store import ModelStore  # noqa: E402
from coordinator.natsproc import free_port, free_ports  # noqa: E402
from coordinator.learn.superlink import CONNECTION, FlowerError, FlowerLink, register_supernode, start_superlink  # noqa: E402
from coordinator.tlsinit import make_tls  # noqa: E402
from node.audit import AuditLog  # noqa: E402
from node.config import ConfigError, load_config  # noqa: E402
from node.learn.data import training_rows  # noqa: E402
from node.learn.supernode import ensure_node_key, start_supernode, supernode_command  # noqa: E402


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("flower")
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    link = FlowerLink(tmp_path / "coordinator" / "flower", "127.0.0.1", free_port(), tls)
    started = [start_superlink(link, log=lambda m: None)]
    try:
        wait_listening(link.host, link.port)
        extra = f'superlink = "{link.address}"\nroot_certificates = "{tls["ca"]}"\n'
        configs = []
        for i, (n, shift) in enumerate(((150, 0.0), (220, 0.6))):
            config = load_config(logistic_site(tmp_path / f"site{i}", f"site{i}", n, shift, seed=i + 1, extra_toml=extra))
            register_supernode(link, ensure_node_key(config), config.site_name)
            started.append(start_supernode(config, free_port(), log=lambda m: None))
            configs.append(config)
        yield link, configs, started
    finally:
        for process in reversed(started):
            process.stop()


def test_federated_newton_on_real_superlink_matches_pooled_fit(federation, tmp_path):
    link, configs, processes = federation
    model = parse_model_spec(logistic_spec("newton", rounds=3))
    store = ModelStore(open_engine(tmp_path / "coordinator.sqlite"))

    model_id, result = runner.train(link, store, model, requester="alice", timeout=150)

    X, y = [], []
    for config in configs:
        rows = training_rows(open_engine(config.database_url), config, model, config.site_name)
        X.append(rows.X)
        y += rows.y
    X, y = np.vstack(X), np.array(y)
    saved = store.get(model_id)
    np.testing.assert_allclose(saved["arrays"][0], newton_fit(X, y, rounds=3), rtol=0, atol=1e-10)
    np.testing.assert_allclose(saved["arrays"][0], newton_fit(X, y), rtol=0, atol=1e-2)
    assert saved["spec_digest"] == model.digest() and saved["provenance"]["requester"] == "alice"
    assert saved["fab_hash"] == installed_fab_hash() and saved["flower_run_id"]   # what the sites pin
    assert set(result["sites"]) == {"site0", "site1"} and result["pooled"]["n"] == 370
    assert len(result["round_seconds"]) == 3
    assert all(p.restarts == 0 for p in processes)
    for config in configs:  # one audit entry per round at each site, plus the final evaluation
        entries = [e for e in AuditLog.for_config(config).entries() if e["request_id"].startswith("flower:")]
        assert [e["request_id"].rsplit(":", 2)[1:] for e in entries[-4:]] == \
            [[str(r), "train"] for r in range(1, 4)] + [["3", "evaluate"]]
        assert AuditLog.for_config(config).verify() == []

    # an unregistered key is refused by the SuperLink (--enable-supernode-auth): registering garbage fails
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAA not-a-key\n")
    with pytest.raises(FlowerError):
        register_supernode(link, bad, "intruder")


def test_sites_refuse_an_app_bundle_they_have_not_pinned(federation, tmp_path):
    """A compromised coordinator submits a FAB whose ClientApp entry point runs its own code first.
    site0 pins only its own install's FAB: the bundle is refused before it is installed or imported,
    and audited.  site1 has added the bundle's hash to [learning] allowed_fab_hashes: it runs it."""
    import json

    link, configs, processes = federation
    model = parse_model_spec(logistic_spec("newton", rounds=1))
    work = runner.prepare_run(link.folder, model)
    app = write_app(work / "app")
    marker = tmp_path / "ran"
    marker.mkdir()
    (app / "radfed_app" / "client.py").write_text(   # proof of execution: one file per process, named by site
        "import os, pathlib, uuid\n"
        f"pathlib.Path({str(marker)!r}, os.environ['FLWR_HOME'].replace('/', '_') + uuid.uuid4().hex).touch()\n"
        "from node.learn import clientapp\n\napp = clientapp.app\n")
    evil = runner.fab_hash(app)
    assert evil != installed_fab_hash()
    site1 = configs[1].path
    original = site1.read_text()
    site1.write_text(original.replace("[learning]\n", f'[learning]\nallowed_fab_hashes = ["{evil}"]\n'))
    try:
        answer = link.flwr("run", str(app), CONNECTION, "--run-config", f"work-dir={json.dumps(str(work))}")
        result = runner.wait_result(work, 150)
    finally:
        site1.write_text(original)
    assert answer.get("run-id") and result["status"] == "error" and "site(s) answering" in result["message"]
    ran = [p.name for p in marker.iterdir()]
    assert ran and all("site1" in name for name in ran), ran          # site0 never imported the bundle
    refused = [e for e in AuditLog.for_config(configs[0]).entries() if e["code"] == "FAB_NOT_ALLOWED"]
    assert [e["request_id"].rsplit(":", 2)[1:] for e in refused] == [["1", "train"]]
    assert refused[0]["decision"] == "refused" and refused[0]["released"] == {"fab_hash": evil}
    assert AuditLog.for_config(configs[0]).verify() == []
    site1_entries = [e for e in AuditLog.for_config(configs[1]).entries() if e["request_id"].startswith("flower:")]
    assert site1_entries[-1]["decision"] == "ok" and site1_entries[-1]["code"] is None   # the pinned FAB ran the policy path


def _superlink_pids(database: Path) -> list[int]:
    """PIDs of flower-superlink processes whose command line names ``database`` (this test's only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(a.endswith(b"flower-superlink") for a in argv[:2]) and str(database).encode() in argv:
            pids.append(int(proc.name))
    return pids


def test_coordinator_serve_flower_starts_and_supervises_the_superlink(tmp_path):
    """`radfed coordinator serve --flower`: nats-server, API and a SuperLink with --database; a
    SuperLink that dies is restarted; stopping serve stops it."""
    import os
    import signal
    import subprocess

    radfed = str(Path(sys.executable).parent / "radfed")
    home = tmp_path / "coord"
    flower_port, nats_port, api_port = free_ports(3)
    ports = ["--nats-port", str(nats_port), "--api-port", str(api_port)]
    assert subprocess.run([radfed, "coordinator", "init", "--home", str(home), *ports], capture_output=True).returncode == 0
    settings = home / "settings.json"
    import json

    settings.write_text(json.dumps({**json.loads(settings.read_text()), "flower_port": flower_port}))
    no_tls = subprocess.run([radfed, "coordinator", "serve", "--home", str(home), "--flower"], capture_output=True,
                            text=True, timeout=60)
    assert no_tls.returncode == 2 and "tls-init" in no_tls.stderr
    assert subprocess.run([radfed, "coordinator", "tls-init", "--home", str(home), "--host", "127.0.0.1"],
                          capture_output=True).returncode == 0
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([radfed, "coordinator", "serve", "--home", str(home), "--flower"], stdout=log,
                             stderr=subprocess.STDOUT)
    database = home / "flower" / "superlink.db"
    try:
        wait_listening("127.0.0.1", flower_port, timeout=60)
        (first,) = _superlink_pids(database)
        os.kill(first, signal.SIGKILL)   # the SuperLink crashes ...
        deadline = time.monotonic() + 60
        while not [p for p in _superlink_pids(database) if p != first]:   # ... and serve starts it again
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        wait_listening("127.0.0.1", flower_port, timeout=60)
        assert database.exists()
        assert "flower-superlink exited with code" in (tmp_path / "serve.log").read_text()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        log.close()
    deadline = time.monotonic() + 10
    while _superlink_pids(database) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _superlink_pids(database)


def test_supervisor_restarts_an_exited_process(tmp_path):
    marker = tmp_path / "starts"
    script = f"open({str(marker)!r}, 'a').write('x'); import sys; sys.exit(3)"
    proc = Supervised("exits", [sys.executable, "-c", script], tmp_path / "out.log", flower_env(), log=lambda m: None)
    proc.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(marker.read_text() if marker.exists() else "") < 2:
            time.sleep(0.1)
    finally:
        proc.stop()
    assert proc.restarts >= 1 and len(marker.read_text()) >= 2


def test_process_command_lines(tmp_path):
    with pytest.raises(FlowerError, match="needs TLS"):
        FlowerLink(tmp_path / "flower", "127.0.0.1", 9999, None).command()
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    cmd = FlowerLink(tmp_path / "flower", "127.0.0.1", 9999, tls).command()
    for flag in ("--enable-supernode-auth", "--disable-runtime-dependency-installation"):
        assert flag in cmd
    assert "--insecure" not in cmd and cmd[cmd.index("--ssl-certfile") + 1] == str(tls["cert"])
    assert cmd[cmd.index("--database") + 1] == str(tmp_path / "flower" / "superlink.db")
    assert flower_env()["FLWR_TELEMETRY_ENABLED"] == "0"

    toml = tmp_path / "node.toml"
    toml.write_text('[site]\nname = "s"\n[learning]\nallowed_features = ["age"]\n')
    with pytest.raises(ConfigError, match="superlink is missing"):
        supernode_command(load_config(toml), 9094)
    toml.write_text('[site]\nname = "s"\n[learning]\nsuperlink = "127.0.0.1:9093"\nroot_certificates = "nope.pem"\n')
    with pytest.raises(ConfigError, match="does not exist"):
        supernode_command(load_config(toml), 9094)
    toml.write_text(f'[site]\nname = "s"\n[learning]\nsuperlink = "127.0.0.1:9093"\nroot_certificates = "{tls["ca"]}"\n')
    cmd = supernode_command(load_config(toml), 9094)
    assert cmd[cmd.index("--root-certificates") + 1] == str(tls["ca"]) and "--insecure" not in cmd
    assert cmd[cmd.index("--node-config") + 1] == f'radfed-config="{toml.resolve()}"'
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(toml.read_text() + 'runtime_port = 9555\nallowed_fab_hashes = ["not-a-hash"]\n')
    with pytest.raises(ConfigError, match="not SHA-256 hex digests"):
        supernode_command(load_config(pinned), None)
    extra = "ab" * 32
    pinned.write_text(toml.read_text() + f'runtime_port = 9555\nallowed_fab_hashes = ["{extra.upper()}"]\n')
    ported = supernode_command(load_config(pinned))
    assert ported[ported.index("--port") + 1] == "9555"                       # [learning] runtime_port
    from node.learn.fabpin import allowed_hashes, require_verified
    from node.disclosure.policy import Refusal

    assert allowed_hashes(load_config(pinned)) == {installed_fab_hash(): "this site's radfed install",
                                                    extra: "node.toml [learning] allowed_fab_hashes"}

    class Ctx:
        node_config = {"radfed-config": str(pinned)}

    with pytest.raises(Refusal, match="did not pass the site's FAB pin"):   # fail closed without the pin
        require_verified(Ctx())
    key = Path(cmd[cmd.index("--auth-supernode-private-key") + 1])
    assert key.stat().st_mode & 0o077 == 0 and key.with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")
