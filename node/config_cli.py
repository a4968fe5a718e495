"""``radfed-node config check``: validate node.toml before a service starts on it.

Three layers, each reported on its own line: the file parses as TOML (:func:`node.config.load_config`),
every table and key is one the node reads with the right type (:func:`node.config.validate`), and the
concerns that read files or parse values accept it (the ``[bus]`` key files, ``[policy]`` numbers).
Exit status 0 when all pass, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import sys

import click

from cdm.tomlkeys import report_check
from node.config import ConfigError, NodeConfig, validate


def check(config: NodeConfig) -> list[str]:
    """Every problem with ``config``; empty when a node can start on it."""
    problems = validate(config)
    if "bus" in config.raw:
        from node.bus_connection import bus_settings

        try:
            settings = bus_settings(config)
            settings.signer_key()
            settings.coordinator_public_key()
            if settings.password is None:
                problems.append("[bus]: neither password nor password_file is set")
            if settings.tls_ca is not None and not settings.tls_ca.is_file():
                problems.append(f"[bus] tls_ca {str(settings.tls_ca)!r} does not exist")
        except ConfigError as exc:
            problems.append(str(exc))
    if "policy" in config.raw:
        from node.disclosure.policy import Policy

        try:
            Policy.from_config(config)
        except (TypeError, ValueError) as exc:
            problems.append(f"[policy]: {exc}")
    return problems


@click.group("config")
def config_group() -> None:
    """The node's configuration file (node.toml)."""


@config_group.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """Check node.toml: known tables and keys, value types, readable key files."""
    config: NodeConfig = ctx.find_root().obj
    if config.path is None:
        raise ConfigError("no node.toml: pass --config PATH (or run in the folder that has node.toml)")
    tables = ", ".join(sorted(config.raw)) or "none"
    sys.exit(report_check(config.path, check(config), f"site {config.site_name}, tables: {tables}", click.echo))
