"""``radfed``: the researcher's and coordinator operator's command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="radfed")
def main() -> None:
    """radfed: run federated radiogenomic queries and operate the coordinator."""


# Command groups owned by other modules register here (one line each).
from coordinator.commands import COMMANDS as _federation_commands  # noqa: E402  (issue 7: bus, API, researcher CLI)
for _name, _command in _federation_commands.items():
    main.add_command(_command, _name)
from coordinator.demo import demo_command as _demo_command  # noqa: E402  (issue 7: radfed demo)
main.add_command(_demo_command, "demo")
from coordinator.commands import coordinator_group as _coordinator_group  # noqa: E402
from coordinator.config_cli import config_group as _config_group  # noqa: E402  (issue 10: config check|apply)
from coordinator.rotation import rotate_site_key_command as _rotate  # noqa: E402  (issue 10: key rotation)
_coordinator_group.add_command(_config_group, "config"); _coordinator_group.add_command(_rotate, "rotate-site-key")  # noqa: E702,E501
from coordinator.learn.cli import LEARN_COMMANDS as _learn_commands  # noqa: E402  (issue 9: train, models, flower-register)
for _name, _command in _learn_commands.items(): main.add_command(_command, _name)  # noqa: E701
from coordinator.learn.superlink import superlink_command as _superlink  # noqa: E402  (issue 9/10: the SuperLink as a service)
_coordinator_group.add_command(_superlink, "superlink")
