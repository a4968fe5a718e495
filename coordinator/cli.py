"""``radfed``: the researcher's and coordinator operator's command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="radfed")
def main() -> None:
    """radfed: run federated radiogenomic queries and operate the coordinator."""


# Command groups owned by other modules register here (one line each).
