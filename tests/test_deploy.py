"""deploy/ without a container engine: the compose files pass the Compose parser (Debian's
docker-compose, ``config -q``), the Dockerfiles are pinned and non-root, every command a systemd unit or
a compose service runs is a real command of the installed CLIs, and the example configs are complete and
accepted by the loaders.  The processes themselves run in test_deploy_e2e.py."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.config import KNOWN_KEYS as COORDINATOR_KEYS, load_coordinator_config, validate as validate_coordinator
from node.config import KNOWN_KEYS as NODE_KEYS, load_config, validate as validate_node

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
INSTALL_BIN = "/opt/radfed/venv/bin/"      # where the units expect the venv (docs/*-guide.md)
COMPOSE_FILES = sorted((DEPLOY / "compose").glob("*.yml"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
CLIS = ("radfed", "radfed-node", "nats-server", "flower-superlink", "flower-supernode")


# ---------------------------------------------------------------------------- helpers (used by the e2e test)


def unit_commands(path: Path) -> dict[str, list[list[str]]]:
    """``{"ExecStartPre": [argv, ...], "ExecStart": [argv]}`` of a systemd unit file."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(path.read_text(encoding="utf-8"))
    commands: dict[str, list[list[str]]] = {}
    for key in ("ExecStartPre", "ExecStart"):
        if parser.has_option("Service", key):
            commands[key] = [shlex.split(line) for line in parser.get("Service", key).splitlines() if line.strip()]
    return commands


def local_argv(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """An installed command line as it runs here: the venv's binaries, ``paths`` prefixes replaced."""
    out = []
    for arg in argv:
        if arg.startswith(INSTALL_BIN):
            arg = str(BIN / arg.removeprefix(INSTALL_BIN))
        for prefix, replacement in paths.items():
            if arg.startswith(prefix):
                arg = str(Path(replacement) / arg.removeprefix(prefix))
        out.append(arg)
    return out


def compose_services(path: Path) -> dict[str, dict]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["services"]


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose (Debian package docker-compose) is not installed: .ci/run installs it"
    return found


# ---------------------------------------------------------------------------- compose


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_passes_the_compose_parser(path):
    run = subprocess.run([compose_binary(), "-f", str(path), "config", "-q"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr


def test_compose_parser_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "site.yml"
    text = (DEPLOY / "compose" / "site.yml").read_text().replace("    depends_on:\n      init:", "    depend_on:\n      init:", 1)
    assert "depend_on" in text
    broken.write_text(text)
    run = subprocess.run([compose_binary(), "-f", str(broken), "config", "-q"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "depend_on" in run.stderr


def test_compose_stacks_have_the_services_and_keep_secrets_in_files():
    coordinator = compose_services(DEPLOY / "compose" / "coordinator.yml")
    site = compose_services(DEPLOY / "compose" / "site.yml")
    assert {"db", "setup", "nats", "coordinator", "superlink"} <= set(coordinator)
    assert {"db", "init", "agent", "dicom", "supernode", "orthanc"} <= set(site)
    assert site["orthanc"]["profiles"] == ["orthanc"]
    assert coordinator["nats"]["command"][:2] == ["nats-server", "-c"]
    for services in (coordinator, site):
        for name, service in services.items():
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
            for key, value in (service.get("environment") or {}).items():
                if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                    assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key} literal"
            if image.startswith("radfed-"):
                assert service["user"] == "10001:10001" and "no-new-privileges:true" in service["security_opt"]


# ---------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_multistage_non_root_with_healthcheck(path):
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(line.upper().startswith("HEALTHCHECK ") for line in lines)
    assert "COPY --from=build /opt/radfed/venv /opt/radfed/venv" in lines
    assert not any("dcmtk" in line for line in lines if line.upper().startswith("RUN "))
    assert (path.parent / f"{path.name}.dockerignore").read_text().startswith("# BuildKit")


def test_node_image_healthcheck_passes_on_a_reachable_cdm_and_fails_otherwise(tmp_path):
    text = (DEPLOY / "docker" / "node.Dockerfile").read_text()
    command = json.loads(re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", text).group(1))
    assert command[0] == "python"
    (tmp_path / "cdm.sqlite").touch()
    for db, healthy in (("cdm.sqlite", True), ("missing-folder/cdm.sqlite", False)):
        (tmp_path / "node.toml").write_text(f'[database]\nurl = "{tmp_path / db}"\n')
        argv = [sys.executable] + [arg.replace("/etc/radfed/node.toml", str(tmp_path / "node.toml"))
                                   for arg in command[1:]]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert (run.returncode == 0) is healthy, run.stderr


def test_image_build_stage_copies_enough_to_build_the_wheel(tmp_path):
    """The build stage's COPY lines, replayed into an empty folder, build the radfed wheel with its
    packages, package data and both console scripts (what the runtime stage's venv then holds)."""
    import zipfile

    for dockerfile in DOCKERFILES:
        build_stage = dockerfile.read_text().split("\nFROM ")[1]          # from the first FROM to the second
        context = tmp_path / dockerfile.stem
        context.mkdir()
        for line in build_stage.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                *sources, _ = line.split()[1:]
                for source in sources:
                    copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy
                    copy(REPO / source, context / source)
        run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                              "--wheel-dir", str(context / "wheels"), str(context)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        (wheel,) = (context / "wheels").glob("radfed-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        assert {"cdm/data/omop_core_concepts.csv", "node/cli.py", "coordinator/cli.py"} <= set(names)
        entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "radfed-node = node.cli:main" in entry_points and "radfed = coordinator.cli:main" in entry_points


def test_guides_name_only_files_that_exist():
    for guide in ("site-admin-guide.md", "operator-guide.md", "researcher-guide.md"):
        text = (REPO / "docs" / guide).read_text()
        for path in set(re.findall(r"\b((?:deploy|docs)/[\w./-]+\.(?:md|yaml|yml|toml|service|Dockerfile))", text)):
            assert (REPO / path).exists(), f"{guide} names {path}, which does not exist"


# ---------------------------------------------------------------------------- the commands are real


def _help(argv: list[str]) -> tuple[int, str]:
    """(exit status, output) of ``argv --help``: the radfed CLIs in process through their
    pyproject entry points (fast; same click objects the scripts run), other programs as processes."""
    import importlib
    import tomllib

    from click.testing import CliRunner

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    name = Path(argv[0]).name
    if name in scripts:
        module, attribute = scripts[name].split(":")
        result = CliRunner().invoke(getattr(importlib.import_module(module), attribute), argv[1:] + ["--help"])
        return result.exit_code, result.output
    run = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr


def _deployed_commands() -> list[tuple[str, list[str]]]:
    """Every command line a unit or a compose service runs, with /etc/radfed/ read as deploy/examples/."""
    examples = {"/etc/radfed/": DEPLOY / "examples"}
    commands = []
    for unit in UNITS:
        for key, argvs in unit_commands(unit).items():
            commands += [(f"{unit.name} {key}", local_argv(argv, examples)) for argv in argvs]
    for compose in COMPOSE_FILES:
        for name, service in compose_services(compose).items():
            if isinstance(service.get("command"), list) and service["command"][0] in CLIS:
                argv = [INSTALL_BIN + service["command"][0]] + service["command"][1:]
                commands.append((f"{compose.name} {name}", local_argv(argv, examples)))
    unique: dict[tuple, list[str]] = {}   # systemd and compose share most command lines: check each once
    for where, argv in commands:
        unique.setdefault(tuple(argv), []).append(where)
    return [(" = ".join(wheres), list(argv)) for argv, wheres in unique.items()]


def test_every_unit_starts_an_installed_cli_from_the_venv():
    for unit in UNITS:
        for key, argvs in unit_commands(unit).items():
            for argv in argvs:
                assert argv[0].startswith(INSTALL_BIN) and argv[0].removeprefix(INSTALL_BIN) in CLIS, (unit, argv)
    assert {u.name for u in UNITS} == {"radfed-node-agent.service", "radfed-dicom-listener.service",
                                      "radfed-supernode.service", "radfed-coordinator.service",
                                      "radfed-nats.service", "radfed-superlink.service"}


@pytest.mark.parametrize("where,argv", [pytest.param(where, argv, id=where) for where, argv in _deployed_commands()])
def test_deployed_command_is_a_real_cli_command(where, argv):
    assert Path(argv[0]).exists(), f"{where}: {argv[0]} is not installed"
    status, output = _help(argv)
    assert status == 0, f"{where}: {' '.join(argv)} --help failed: {output}"
    assert "sage" in output   # "Usage:" (click, nats-server) or "usage:" (argparse)


def test_a_misspelt_subcommand_would_be_caught():
    status, output = _help([str(BIN / "radfed-node"), "--config", str(DEPLOY / "examples" / "node.toml"), "serv"])
    assert status != 0 and "No such command" in output
    status, output = _help([str(BIN / "radfed"), "coordinator", "config", "aply"])
    assert status != 0 and "No such command" in output


def test_units_are_hardened_and_write_only_their_data_folder():
    for unit in UNITS:
        text = unit.read_text()
        for setting in ("User=radfed", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                        "PrivateTmp=yes", "CapabilityBoundingSet=\n"):
            assert setting in text, f"{unit.name}: {setting.strip()} missing"
        writable = re.findall(r"^ReadWritePaths=(.*)$", text, re.M)
        assert writable and all(p.startswith("/var/lib/radfed/") for line in writable for p in line.split())


def _verify_units(folder: Path) -> subprocess.CompletedProcess:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze (Debian package systemd) is not installed: .ci/run installs it"
    return subprocess.run([found, "verify", *sorted(str(p) for p in folder.glob("*.service"))],
                          capture_output=True, text=True, timeout=120, cwd=folder)


def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser: no unknown or misspelt directive, every command executable (the venv's
    binaries stand in for /opt/radfed/venv/bin)."""
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALL_BIN, f"{BIN}/"))
    run = _verify_units(tmp_path)
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr
    broken = tmp_path / "radfed-nats.service"
    broken.write_text(broken.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    run = _verify_units(tmp_path)
    assert "Unknown key" in run.stderr and "NoNewPrivilege" in run.stderr


def test_units_and_compose_run_the_same_commands():
    """What systemd runs and what compose runs are one command line (paths inside the image alike)."""
    site = compose_services(DEPLOY / "compose" / "site.yml")
    coordinator = compose_services(DEPLOY / "compose" / "coordinator.yml")
    pairs = [("radfed-node-agent.service", site["agent"]), ("radfed-dicom-listener.service", site["dicom"]),
             ("radfed-supernode.service", site["supernode"]), ("radfed-coordinator.service", coordinator["coordinator"]),
             ("radfed-superlink.service", coordinator["superlink"])]
    for unit, service in pairs:
        argv = unit_commands(DEPLOY / "systemd" / unit)["ExecStart"][0]
        assert [argv[0].removeprefix(INSTALL_BIN)] + argv[1:] == service["command"], unit
    nats = unit_commands(DEPLOY / "systemd" / "radfed-nats.service")
    assert [a.removeprefix(INSTALL_BIN) for a in nats["ExecStartPre"][0]] == coordinator["setup"]["command"]
    assert nats["ExecStart"][0][1:3] == coordinator["nats"]["command"][1:3]


def test_flower_services_run_what_serve_flower_supervises(tmp_path, monkeypatch):
    """`radfed coordinator superlink` / `radfed-node supernode` (the units' and compose's commands) exec
    exactly the command line and environment that `serve --flower` supervises."""
    import os

    from click.testing import CliRunner

    from coordinator.cli import main as radfed
    from coordinator.learn.superlink import FlowerLink
    from coordinator.tlsinit import make_tls
    from node.cli import main as radfed_node
    from node.learn.supernode import supernode_command, supernode_env

    execs = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: execs.append((path, list(argv), dict(env))))
    home = tmp_path / "coordinator"
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[coordinator]\nhome = "{home}"\n[flower]\nhost = "127.0.0.1"\nport = 9193\n')
    refused = CliRunner().invoke(radfed, ["coordinator", "superlink", "--config", str(config)])
    assert refused.exit_code == 2 and "no coordinator" in refused.output and not execs
    assert CliRunner().invoke(radfed, ["coordinator", "config", "apply", "--config", str(config)]).exit_code == 0
    refused = CliRunner().invoke(radfed, ["coordinator", "superlink", "--config", str(config)])
    assert refused.exit_code == 2 and "needs TLS" in refused.output and not execs   # [nats] tls not set
    make_tls(home / "tls", ["127.0.0.1"])
    done = CliRunner().invoke(radfed, ["coordinator", "superlink", "--config", str(config)])
    assert done.exit_code == 0, done.output
    (path, argv, env), = execs
    tls = {"cert": home / "tls" / "server.pem", "key": home / "tls" / "server.key", "ca": home / "tls" / "ca.pem"}
    assert argv == FlowerLink(home / "flower", "127.0.0.1", 9193, tls).command() and path == argv[0]
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_HOME"] == str(home / "flower" / "home")

    (tmp_path / "ca.pem").write_text("CA")
    node_toml = tmp_path / "node.toml"
    node_toml.write_text((DEPLOY / "examples" / "node.toml").read_text()
                         .replace('data_dir = "/var/lib/radfed/node"', f'data_dir = "{tmp_path}/data"')
                         .replace('root_certificates = "bundle/ca.pem"', f'root_certificates = "{tmp_path}/ca.pem"'))
    done = CliRunner().invoke(radfed_node, ["--config", str(node_toml), "supernode"])
    assert done.exit_code == 0, done.output
    path, argv, env = execs[-1]
    site = load_config(node_toml)
    assert argv == supernode_command(site, 9094) == supernode_command(site) and path == argv[0]
    assert argv[argv.index("--port") + 1] == "9094"
    assert env == supernode_env(site)
    shim = Path(env["PATH"].split(os.pathsep)[0]) / "flwr-clientapp"   # the FAB pin comes first on PATH
    assert shim == tmp_path / "data" / "flower" / "bin" / "flwr-clientapp" and "node.learn.fabpin" in shim.read_text()
    assert "--insecure" not in argv and argv[argv.index("--root-certificates") + 1] == f"{tmp_path}/ca.pem"
    assert argv[argv.index("--superlink") + 1] == "bus.radfed.example.org:9093"


# ---------------------------------------------------------------------------- example configs


def _active_keys(path: Path) -> set[tuple[str, str]]:
    import tomllib

    raw = tomllib.loads(path.read_text())
    return {(table, key) for table, values in raw.items() for key in values}


def test_node_example_is_valid_and_documents_every_key():
    path = DEPLOY / "examples" / "node.toml"
    assert validate_node(load_config(path)) == []
    text = path.read_text()
    for table, keys in NODE_KEYS.items():
        assert f"[{table}]" in text, f"[{table}] missing from {path.name}"
        for key in keys:
            assert re.search(rf"^#? ?{key} = |^\[{table}\.{key}\]$", text, re.M), \
                f"[{table}] {key} is in node.config.KNOWN_KEYS: add it, with a comment, to deploy/examples/node.toml"


def test_coordinator_example_is_valid_and_sets_every_key():
    path = DEPLOY / "examples" / "coordinator.toml"
    config = load_coordinator_config(path)
    assert validate_coordinator(config) == []
    assert _active_keys(path) == {(t, k) for t, keys in COORDINATOR_KEYS.items() for k in keys}, \
        "every key of coordinator.config.KNOWN_KEYS is set, with a comment, in deploy/examples/coordinator.toml"


def test_config_check_commands_report_unknown_keys_and_wrong_types(tmp_path):
    node = tmp_path / "node.toml"
    node.write_text((DEPLOY / "examples" / "node.toml").read_text()
                    .replace("min_cell_count = 5", "min_cel_count = 5").replace("port = 11112", "port = \"11112\""))
    run = subprocess.run([str(BIN / "radfed-node"), "--config", str(node), "config", "check"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "[policy] min_cel_count: unknown key" in run.stderr and "[dicom] port: expected int, got str" in run.stderr
    coordinator = tmp_path / "coordinator.toml"
    coordinator.write_text((DEPLOY / "examples" / "coordinator.toml").read_text().replace("[api]", "[apl]")
                           .replace("jetstream = true", "jetstream = 1")
                           .replace('home = "/var/lib/radfed/coordinator"', 'home = "home"'))
    run = subprocess.run([str(BIN / "radfed"), "coordinator", "config", "check", "--config", str(coordinator)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "[apl]: unknown table" in run.stderr
    assert "[nats] jetstream: expected bool, got int" in run.stderr
    run = subprocess.run([str(BIN / "radfed"), "coordinator", "config", "apply", "--config", str(coordinator)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "home").exists()   # a refused file writes nothing
