"""``radfed``: the researcher's and coordinator operator's command line."""

from __future__ import annotations

import click

from coordinator.commands import COMMANDS as FEDERATION_COMMANDS
from coordinator.commands import coordinator_group
from coordinator.config_cli import config_group
from coordinator.demo import demo_command
from coordinator.learn.cli import LEARN_COMMANDS
from coordinator.learn.superlink import superlink_command
from coordinator.rotation import rotate_site_key_command


@click.group()
@click.version_option(package_name="radfed")
def main() -> None:
    """radfed: run federated radiogenomic queries and operate the coordinator."""


# Each concern's commands live in the module that owns it; they are only assembled here.
for _name, _command in {**FEDERATION_COMMANDS, "demo": demo_command, **LEARN_COMMANDS}.items():
    main.add_command(_command, _name)
coordinator_group.add_command(config_group, "config")
coordinator_group.add_command(rotate_site_key_command, "rotate-site-key")
coordinator_group.add_command(superlink_command, "superlink")
