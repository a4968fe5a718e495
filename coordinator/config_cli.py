"""``radfed coordinator config check|apply``: validate coordinator.toml, or write it into the home.

``apply`` is what a deployment runs before nats-server starts (systemd ``ExecStartPre=``, the compose
``setup`` service): it creates or updates the home, makes TLS material on first use and regenerates
``nats.conf``, so the bus and the coordinator agree on one file.
"""

from __future__ import annotations

import os
import sys

import click

from cdm.tomlkeys import report_check
from coordinator.config import apply, load_coordinator_config, validate

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), show_default=True,
    default=os.environ.get("RADFED_COORDINATOR_CONFIG", "coordinator.toml"),
    help="coordinator.toml (env RADFED_COORDINATOR_CONFIG).")


@click.group("config")
def config_group() -> None:
    """The coordinator's configuration file (coordinator.toml)."""


@config_group.command("check")
@config_option
def check_command(config_path: str) -> None:
    """Check coordinator.toml: known tables and keys, value types, ports, URLs."""
    config = load_coordinator_config(config_path)
    sys.exit(report_check(config.path, validate(config), f"home {config.home_path}", click.echo))


@config_group.command("apply")
@config_option
def apply_command(config_path: str) -> None:
    """Create or update the coordinator home from coordinator.toml and regenerate nats.conf."""
    home, notes = apply(load_coordinator_config(config_path))
    for note in notes:
        click.echo(note, err=True)
    click.echo(f"coordinator home {home.path}: bus {home.nats_url}, API {home.api_url}; {home.nats_conf_path} written")
