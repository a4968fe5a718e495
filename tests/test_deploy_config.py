"""coordinator.toml and node.toml validation, and ``config apply``: the file is the whole truth about
the coordinator home's settings, TLS material is made once, a bad file writes nothing."""

from __future__ import annotations

import json

import pytest

from cdm.spec import parse_spec
from coordinator.config import CoordinatorConfigError, apply, load_coordinator_config, validate
from coordinator.service import with_code_systems
from node.config import NodeConfig, validate as validate_node


def write(tmp_path, body: str):
    path = tmp_path / "coordinator.toml"
    path.write_text('[coordinator]\nhome = "home"\n' + body)
    return load_coordinator_config(path)


def test_apply_writes_exactly_the_file_and_makes_tls_once(tmp_path):
    config = write(tmp_path, '[nats]\nhost = "127.0.0.1"\nport = 4333\npublic_url = "tls://bus.example.org:4333"\n'
                             'jetstream = true\ntls = true\ntls_hosts = ["bus.example.org", "localhost"]\n'
                             '[api]\nport = 8799\n')
    home, notes = apply(config)
    assert home.path == tmp_path / "home" and any("private CA" in n for n in notes)
    settings = json.loads(home.settings_path.read_text())
    assert (settings["nats_port"], settings["api_port"], settings["jetstream"]) == (4333, 8799, True)
    assert settings["public_nats_url"] == "tls://bus.example.org:4333" and home.nats_url == "tls://127.0.0.1:4333"
    conf = home.nats_conf_path.read_text()
    assert '"127.0.0.1:4333"' in conf and "tls {" in conf and "jetstream {" in conf
    ca = (home.path / "tls" / "ca.pem").read_bytes()

    # the same file again: nothing new; the CA (already in site bundles) is kept
    home, notes = apply(config)
    assert notes == [] and (home.path / "tls" / "ca.pem").read_bytes() == ca

    # keys removed from the file go back to their defaults, in settings.json and nats.conf
    smaller = write(tmp_path, '[nats]\nhost = "127.0.0.1"\nport = 4333\n')
    home, notes = apply(smaller)
    settings = json.loads(home.settings_path.read_text())
    assert settings["jetstream"] is False and settings["public_nats_url"] is None and settings["api_port"] == 8750
    assert "jetstream {" not in home.nats_conf_path.read_text()
    assert any("still speaks TLS" in n for n in notes)    # tls = false cannot unmake existing certificates


@pytest.mark.parametrize("body,problem", [
    ("[nats]\nport = 0\n", "[nats] port: 0 is not a TCP port"),
    ("[api]\nport = 70000\n", "[api] port: 70000 is not a TCP port"),
    ('[nats]\npublic_url = "http://bus:4222"\n', "must start with nats:// or tls://"),
    ('[nats]\ntls = true\npublic_url = "nats://bus:4222"\n', "sites must connect with tls://"),
    ("[nats]\ntls_hosts = []\n", "[nats] tls_hosts: a non-empty list"),
    ('[nats]\nport = "4222"\n', "[nats] port: expected int, got str"),
    ("[api]\nport = true\n", "[api] port: expected int, got bool"),
    ('[bus]\nurl = "nats://x"\n', "[bus]: unknown table"),
    ('[database]\nuri = "sqlite:///x"\n', "[database] uri: unknown key"),
    ('[code_systems]\nHOSPLAB = "not a uri"\n', "[code_systems] HOSPLAB: not a code system URI"),
    ('[code_systems]\nLOINC = "http://hospital.example/codes"\n', "already names a standard vocabulary"),
])
def test_coordinator_config_problems_are_named_and_nothing_is_written(tmp_path, body, problem):
    config = write(tmp_path, body)
    assert any(problem in p for p in validate(config)), validate(config)
    with pytest.raises(CoordinatorConfigError, match="coordinator.toml"):
        apply(config)
    assert not (tmp_path / "home").exists()


def test_missing_or_broken_coordinator_config_is_a_clear_error(tmp_path):
    with pytest.raises(CoordinatorConfigError, match="does not exist"):
        load_coordinator_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[nats\nport = 1\n")
    with pytest.raises(CoordinatorConfigError, match="not valid TOML"):
        load_coordinator_config(tmp_path / "bad.toml")


@pytest.mark.parametrize("raw,problem", [
    ({"policy": {"min_cell_count": True}}, "[policy] min_cell_count: expected int, got bool"),
    ({"policy": {"min_cell_count": 5.5}}, "[policy] min_cell_count: expected int, got float"),
    ({"bus": {"heartbeat_seconds": "5"}}, "[bus] heartbeat_seconds: expected int or float, got str"),
    ({"site": "site-a"}, "[site] must be a table"),
    ({"sites": {"name": "a"}}, "[sites]: unknown table"),
    ({"dicom": {"aet": "RADFED"}}, "[dicom] aet: unknown key"),
])
def test_node_config_problems_are_named(raw, problem):
    assert any(problem in p for p in validate_node(NodeConfig(None, raw))), validate_node(NodeConfig(None, raw))


def test_node_config_accepts_numbers_where_floats_are_allowed():
    assert validate_node(NodeConfig(None, {"bus": {"heartbeat_seconds": 2}, "dicom": {"port": 104}})) == []


def test_network_code_system_names_reach_every_spec(tmp_path):
    """A local code system named once for the network (coordinator.toml [code_systems]) (issue 19.3)."""
    home, _ = apply(write(tmp_path, '[code_systems]\nHOSPLAB = "http://hospital.example/codes"\n'))
    network = json.loads(home.settings_path.read_text())["code_systems"]
    assert network == {"HOSPLAB": "http://hospital.example/codes"}
    spec = {"cohort": {"index": {"kind": "measurement", "code": "HOSPLAB:K-12"}}, "analysis": {"type": "count"}}
    assert parse_spec(with_code_systems(spec, network)).cohort.index.code == "http://hospital.example/codes|K-12"
    own = {**spec, "code_systems": {"HOSPLAB": "urn:oid:1.2.3"}}  # a spec's own name wins
    assert parse_spec(with_code_systems(own, network)).cohort.index.code == "urn:oid:1.2.3|K-12"
    # without the network's names the alias is just an unknown vocabulary name at every node
    assert parse_spec(spec).cohort.index.code == "HOSPLAB:K-12"
    home, _ = apply(write(tmp_path, ""))
    assert json.loads(home.settings_path.read_text()).get("code_systems") is None
