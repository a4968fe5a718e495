"""The site's Flower SuperNode: its authentication key, its command line, its supervision.

node.toml::

    [learning]
    superlink = "coordinator.example.org:9093"   # the coordinator's SuperLink (Fleet API)
    root_certificates = "ca.pem"                 # the coordinator CA (from the enrollment bundle);
                                                 # absent: the system's CA roots verify the SuperLink
    allowed_features = ["age", "image_feature:RADFED:*"]

``radfed-node flower-key`` writes an ECDSA P-384 key pair (OpenSSH format, what Flower 1.42 expects)
under the node's data folder; the site sends the ``.pub`` file to the coordinator, which registers it
(``flwr supernode register``); the SuperLink runs with ``--enable-supernode-auth`` and refuses any
other node.  The SuperNode gets the node config (``radfed-config`` = this node.toml, ``radfed-db``)
that the ClientApp reads to open the CDM through the policy-checked path, and never installs a FAB's
dependencies (Flower's SuperNode default; radfed does not pass ``--allow-runtime-dependency-installation``).
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


def supernode_command(config, runtime_port: int) -> list[str]:
    """``flower-supernode`` argv for this site; :class:`ConfigError` names what is missing."""
    learning = config.section("learning")
    superlink = learning.get("superlink")
    if not superlink:
        raise ConfigError("[learning] superlink is missing: the coordinator's SuperLink host:port")
    if config.path is None:
        raise ConfigError("the SuperNode needs a node.toml (its ClientApp reads the site's policy from it)")
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


def start_supernode(config, runtime_port: int = 9094, log=print):
    """Start and supervise ``flower-supernode`` (``radfed-node serve --flower``); returns the supervisor."""
    from cdm.learn.process import Supervised, flower_env

    folder = config.data_dir / "flower"
    folder.mkdir(parents=True, exist_ok=True)
    return Supervised("flower-supernode", supernode_command(config, runtime_port), folder / "supernode.out",
                      flower_env(folder / "home"), log).start()


@click.command("flower-key")
@click.pass_context
def flower_key_command(ctx: click.Context) -> None:
    """Print the path of this site's Flower SuperNode public key (created on first use).

    Send the file to the coordinator operator: `radfed flower-register KEY.pub SITE`.
    """
    config = ctx.find_root().obj
    click.echo(str(ensure_node_key(config)))
