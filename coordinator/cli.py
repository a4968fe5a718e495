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
