"""``radfed-node``: the site administrator's command line.

Each concern contributes its own command group from its own module; this file only assembles them
and turns the package's expected errors (bad database, bad config, bad input) into one clear line
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys

import click

from cdm.db import CDMError, create_cdm, open_engine, schema_version, table_counts
from cdm.vocabulary import AthenaError, UnknownCode, Vocabulary, load_athena, load_source_to_concept_map
from node.config import ConfigError, NodeConfig, load_config

EXPECTED_ERRORS = (CDMError, ConfigError, AthenaError, UnknownCode, FileNotFoundError)


class NodeGroup(click.Group):
    """A click group that reports expected errors as ``error: ...`` with exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=NodeGroup)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="node.toml (default ./node.toml).")
@click.option("--db", help="CDM database URL or SQLite path (overrides node.toml).")
@click.version_option(package_name="radfed")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, db: str | None) -> None:
    """radfed site node: load FHIR/DICOM/genomics into the CDM and answer federated queries."""
    ctx.obj = load_config(config_path, db)


def node_config(ctx: click.Context) -> NodeConfig:
    return ctx.find_root().obj


@main.command()
@click.option("--db", help="CDM database URL or SQLite path.")
@click.pass_context
def init(ctx: click.Context, db: str | None) -> None:
    """Create the CDM (OMOP v5.4 + radiogenomic extensions) in an empty or existing database."""
    config = node_config(ctx)
    url = db or config.database_url
    engine = open_engine(url)
    create_cdm(engine, source_name=config.site_name)
    click.echo(f"CDM ready at {engine.url.render_as_string(hide_password=True)} (schema version {schema_version(engine)})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="List empty tables too.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """Row counts of every CDM table."""
    engine = open_engine(node_config(ctx).database_url)
    counts = table_counts(engine)
    if as_json:
        click.echo(json.dumps({"schema_version": schema_version(engine), "tables": counts}, indent=2))
        return
    click.echo(f"site {node_config(ctx).site_name}, CDM schema version {schema_version(engine)}")
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        if count or show_all:
            click.echo(f"  {name:<{width}}  {count:>10,}")


@main.group()
def vocab() -> None:
    """The node's vocabulary: Athena downloads, the site's own code mappings, look-ups."""


@vocab.command("load-athena")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.pass_context
def vocab_load_athena(ctx: click.Context, folder: str) -> None:
    """Load an Athena vocabulary download (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv, ...)."""
    engine = open_engine(node_config(ctx).database_url)
    loaded = load_athena(engine, folder, progress=lambda f, n: click.echo(f"  {f}: {n:,} rows", err=True))
    for table, count in loaded.items():
        click.echo(f"{table}: {count:,} rows")


@vocab.command("load-map")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def vocab_load_map(ctx: click.Context, path: str) -> None:
    """Load the site's SOURCE_TO_CONCEPT_MAP (local codes onto standard ones)."""
    engine = open_engine(node_config(ctx).database_url)
    click.echo(f"{load_source_to_concept_map(engine, path):,} mappings loaded")


@vocab.command("resolve")
@click.argument("references", nargs=-1, required=True)
@click.pass_context
def vocab_resolve(ctx: click.Context, references: tuple[str, ...]) -> None:
    """Show the concept id each SYSTEM:code resolves to at this node."""
    vocabulary = Vocabulary(open_engine(node_config(ctx).database_url))
    for reference in references:
        concept_id = vocabulary.resolve(reference)
        click.echo(f"{reference}\t{concept_id if concept_id is not None else 'not in this node'}")


@main.group()
def ingest() -> None:
    """Load source data into the CDM (bad input is quarantined, never dropped)."""


# Commands owned by other modules register here, one line each, e.g.
#   from node.ingest.fhir_cli import fhir_command; ingest.add_command(fhir_command, "fhir")
from node.ingest.fhir_cli import fhir_command, mapping_report_command  # noqa: E402  (issue 3: FHIR ingest)
ingest.add_command(fhir_command, "fhir"); main.add_command(mapping_report_command, "mapping-report")  # noqa: E702
from node.agent import serve_command  # noqa: E402  (issue 7: the bus agent)
main.add_command(serve_command, "serve")
from node.synth.cli import synth_command  # noqa: E402  (issue 5: synthetic cohorts)
main.add_command(synth_command, "synth")
from node.dicom.cli import dicom_group, features_command, ingest_dicom_command  # noqa: E402  (issue 4: DICOM)
ingest.add_command(ingest_dicom_command, "dicom"); main.add_command(dicom_group, "dicom"); main.add_command(features_command, "features")  # noqa: E702,E501
from node.query_cli import audit_group, query_command  # noqa: E402  (issue 6: queries, disclosure, audit)
main.add_command(query_command, "query"); main.add_command(audit_group, "audit")  # noqa: E702
from node.config_cli import config_group  # noqa: E402  (issue 10: radfed-node config check)
main.add_command(config_group, "config")
from node.approvals import approvals_group  # noqa: E402  (issue 6: manual approval queue)
main.add_command(approvals_group, "approvals")
from node.model_cli import concordance_command, forecast_command  # noqa: E402  (issue 8: per-patient rounds)
main.add_command(concordance_command, "concordance"); main.add_command(forecast_command, "forecast")  # noqa: E702
from node.learn.supernode import flower_key_command, flower_pins_command, supernode_run_command  # noqa: E402  (issue 9: Flower SuperNode)
main.add_command(flower_key_command, "flower-key"); main.add_command(flower_pins_command, "flower-pins"); main.add_command(supernode_run_command, "supernode")  # noqa: E702,E501
