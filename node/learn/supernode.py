"""The site's Flower SuperNode: its authentication key, its command line, its supervision.

node.toml::

    [learning]
    superlink = "coordinator.example.org:9093"   # the coordinator's SuperLink (Fleet API)
    root_certificates = "ca.pem"                 # the coordinator CA (from the enrollment bundle);
                                                 # absent: the system's CA roots verify the SuperLink
    allowed_features = ["age", "image_feature:RADFED:*"]
    # allowed_fab_hashes = ["<sha256>"]          # FABs besides this install's own (node/learn/fabpin.py)
    # runtime_port = 9094                        # the SuperNode's loopback runtime API

``radfed-node flower-key`` writes an ECDSA P-384 key pair (OpenSSH format, what Flower 1.42 expects)
under the node's data folder; the site sends the ``.pub`` file to the coordinator, which registers it
(``flwr supernode register``); the SuperLink runs with ``--enable-supernode-auth`` and refuses any
other node.  The SuperNode gets the node config (``radfed-config`` = this node.toml, ``radfed-db``)
that the ClientApp reads to open the CDM through the policy-checked path, and never installs a FAB's
dependencies (Flower's SuperNode default; radfed does not pass ``--allow-runtime-dependency-installation``).
Its environment puts ``<data_dir>/flower/bin/flwr-clientapp`` first on ``PATH``: the FAB pin of
:mod:`node.learn.fabpin`, so a run whose app bundle is not one the site allows is refused unopened.

Two ways to run it: ``radfed-node serve --flower`` supervises it next to the bus agent
(:func:`start_supernode`); ``radfed-node supernode`` *is* it (the process replaces itself with
``flower-supernode``, same command line and environment), for a service manager that supervises
(deploy/systemd/radfed-supernode.service, the compose ``supernode`` service).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.config import ConfigError

KEY_NAME = "flower-supernode.key"


def key_paths(config) -> tuple[Path, Path]:
    private = config.data_dir / "flower" / KEY_NAME
    return private, private.with_suffix(".pub")


def ensure_node_key(config) -> Path:
    """The SuperNode's public key file, creating the key pair on first use (private key 0600)."""
    private, public = key_paths(config)
    if private.exists() and public.exists():
        return public
    private.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return public


def _config_path(config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() or config.path is None else config.path.parent / path


DEFAULT_RUNTIME_PORT = 9094


def supernode_command(config, runtime_port: int | None = None) -> list[str]:
    """``flower-supernode`` argv for this site; :class:`ConfigError` names what is missing.
    ``runtime_port`` (the SuperNode's loopback runtime API): the argument, else ``[learning]
    runtime_port``, else 9094."""
    learning = config.section("learning")
    runtime_port = runtime_port or learning.get("runtime_port") or DEFAULT_RUNTIME_PORT
    if not 0 < int(runtime_port) < 65536:
        raise ConfigError(f"[learning] runtime_port: {runtime_port} is not a TCP port (1-65535)")
    superlink = learning.get("superlink")
    if not superlink:
        raise ConfigError("[learning] superlink is missing: the coordinator's SuperLink host:port")
    if config.path is None:
        raise ConfigError("the SuperNode needs a node.toml (its ClientApp reads the site's policy from it)")
    pins = learning.get("allowed_fab_hashes") or []
    bad = [p for p in pins if not (isinstance(p, str) and len(p) == 64 and all(c in "0123456789abcdefABCDEF" for c in p))]
    if bad:
        raise ConfigError(f"[learning] allowed_fab_hashes: {bad} are not SHA-256 hex digests (64 hex digits)")
    private, _ = key_paths(config)
    ensure_node_key(config)
    node_config = f'radfed-config="{config.path}"'
    if config.db_override:
        node_config += f' radfed-db="{config.db_override}"'
    cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", str(superlink),
           "--auth-supernode-private-key", str(private), "--node-config", node_config,
           "--host", "127.0.0.1", "--port", str(runtime_port)]
    if learning.get("root_certificates"):  # always TLS: the SuperLink allows node auth only over TLS
        ca = _config_path(config, str(learning["root_certificates"]))
        if not ca.exists():
            raise ConfigError(f"[learning] root_certificates: {ca} does not exist")
        cmd += ["--root-certificates", str(ca)]
    return cmd


def supernode_env(config) -> dict:
    """The SuperNode's environment: Flower's (telemetry off) with the FAB-pin shim first on PATH."""
    from cdm.learn.process import flower_env
    from node.learn.fabpin import write_shim

    folder = config.data_dir / "flower"
    env = flower_env(folder / "home")
    env["PATH"] = str(write_shim(folder / "bin").parent) + os.pathsep + env["PATH"]
    return env


def start_supernode(config, runtime_port: int | None = None, log=print):
    """Start and supervise ``flower-supernode`` (``radfed-node serve --flower``); returns the supervisor."""
    from cdm.learn.process import Supervised

    folder = config.data_dir / "flower"
    folder.mkdir(parents=True, exist_ok=True)
    command = supernode_command(config, runtime_port)
    return Supervised("flower-supernode", command, folder / "supernode.out", supernode_env(config), log).start()


@click.command("supernode")
@click.option("--runtime-port", type=click.IntRange(1, 65535),
              help="The SuperNode's local runtime API port (loopback; default [learning] runtime_port, else 9094).")
@click.pass_context
def supernode_run_command(ctx: click.Context, runtime_port: int | None) -> None:
    """Run this site's Flower SuperNode in the foreground (for systemd / compose, which restart it).

    The same command line and environment as `serve --flower` supervises: the registered key, TLS to
    [learning] superlink, the FAB pin; the process becomes `flower-supernode` (same PID).
    """
    config = ctx.find_root().obj
    command = supernode_command(config, runtime_port)
    env = supernode_env(config)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


@click.command("flower-key")
@click.pass_context
def flower_key_command(ctx: click.Context) -> None:
    """Print the path of this site's Flower SuperNode public key (created on first use).

    Send the file to the coordinator operator: `radfed flower-register KEY.pub SITE`.
    """
    config = ctx.find_root().obj
    click.echo(str(ensure_node_key(config)))


@click.command("flower-pins")
@click.pass_context
def flower_pins_command(ctx: click.Context) -> None:
    """The SHA-256 of every Flower app bundle this site's SuperNode will run, and why.

    Compare with the FAB hash of a run (`flwr ls` on the coordinator, a stored model's fab_hash).
    """
    from node.learn.fabpin import allowed_hashes

    for digest, why in allowed_hashes(ctx.find_root().obj).items():
        click.echo(f"{digest}  {why}")
