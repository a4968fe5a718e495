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

import socket
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
from cdm.learn.process import Supervised, flower_env, wait_listening  # noqa: E402
from coordinator.learn import runner  # noqa: E402
from coordinator.learn.store import ModelStore  # noqa: E402
from coordinator.learn.superlink import FlowerError, FlowerLink, register_supernode, start_superlink  # noqa: E402
from coordinator.tlsinit import make_tls  # noqa: E402
from node.audit import AuditLog  # noqa: E402
from node.config import ConfigError, load_config  # noqa: E402
from node.learn.data import training_rows  # noqa: E402
from node.learn.supernode import ensure_node_key, start_supernode, supernode_command  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def federation(tmp_path):
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
    assert saved["fab_hash"] and len(saved["fab_hash"]) == 64 and saved["flower_run_id"]
    assert set(result["sites"]) == {"site0", "site1"} and result["pooled"]["n"] == 370
    assert len(result["round_seconds"]) == 3
    assert all(p.restarts == 0 for p in processes)
    for config in configs:  # one audit entry per round at each site, plus the final evaluation
        entries = [e for e in AuditLog.for_config(config).entries() if e["request_id"].startswith("flower:")]
        assert [e["request_id"].rsplit(":", 2)[1:] for e in entries] == \
            [[str(r), "train"] for r in range(1, 4)] + [["3", "evaluate"]]
        assert AuditLog.for_config(config).verify() == []

    # an unregistered key is refused by the SuperLink (--enable-supernode-auth): registering garbage fails
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAA not-a-key\n")
    with pytest.raises(FlowerError):
        register_supernode(link, bad, "intruder")


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
    key = Path(cmd[cmd.index("--auth-supernode-private-key") + 1])
    assert key.stat().st_mode & 0o077 == 0 and key.with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")
