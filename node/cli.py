"""``radfed-node``: the site administrator's command line.

Each concern contributes its own command group from its own module; this file only assembles them
and turns the package's expected errors (bad database, bad config, bad input) into one clear line
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json

import click

from cdm.db import create_cdm, layout_of, open_engine, require_cdm, table_counts
from cdm.cli_errors import ErrorReportingGroup
from cdm.vocabulary import Vocabulary, load_athena, load_source_to_concept_map
from node.bus_handler import serve_command
from node.disclosure.approvals import approvals_group
from node.config import NodeConfig, load_config
from node.config_cli import config_group
from node.dicom.cli import dicom_group, features_command, ingest_dicom_command
from node.ingest.fhir_cli import fhir_command, mapping_report_command
from node.learn.supernode import flower_key_command, flower_pins_command, supernode_run_command
from node.model_cli import concordance_command, forecast_command
from node.omop.cli import attach_command, ingest_omop_command
from node.query_cli import audit_group, query_command
from node.secure_cli import secure_group
from node.synth.cli import synth_command



@click.group(cls=ErrorReportingGroup)
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
    click.echo(f"CDM ready at {engine.url.render_as_string(hide_password=True)} (schema version {require_cdm(engine)})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="List empty tables too.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """Row counts of every CDM table."""
    engine = open_engine(node_config(ctx).database_url)
    counts = table_counts(engine)
    layout = layout_of(engine)
    if as_json:
        click.echo(json.dumps({"schema_version": require_cdm(engine), "tables": counts,
                               "attached": layout.describe() if layout else None}, indent=2))
        return
    click.echo(f"site {node_config(ctx).site_name}, CDM schema version {require_cdm(engine)}")
    if layout:
        click.echo(f"attached: {layout.describe()}")
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
    engine = node_config(ctx).writable_cdm("vocab load-athena")
    loaded = load_athena(engine, folder, progress=lambda f, n: click.echo(f"  {f}: {n:,} rows", err=True))
    for table, count in loaded.items():
        click.echo(f"{table}: {count:,} rows")


@vocab.command("load-map")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def vocab_load_map(ctx: click.Context, path: str) -> None:
    """Load the site's SOURCE_TO_CONCEPT_MAP (local codes onto standard ones)."""
    engine = node_config(ctx).writable_cdm("vocab load-map")
    click.echo(load_source_to_concept_map(engine, path).text())


@vocab.command("resolve")
@click.argument("references", nargs=-1, required=True)
@click.pass_context
def vocab_resolve(ctx: click.Context, references: tuple[str, ...]) -> None:
    """Show what each SYSTEM:code (or system-uri|code) means here and how many rows carry it."""
    engine = open_engine(node_config(ctx).database_url)
    require_cdm(engine)
    vocabulary = Vocabulary(engine)
    for reference in references:
        concept_id, found = vocabulary.describe(reference)
        click.echo("\t".join(str(x) for x in (reference, concept_id, found) if x is not None))


@main.group()
def ingest() -> None:
    """Load source data into the CDM (bad input is quarantined, never dropped)."""


# Each concern's commands live in the module that owns it; they are only assembled here.
ingest.add_command(fhir_command, "fhir")
ingest.add_command(ingest_dicom_command, "dicom")
ingest.add_command(ingest_omop_command, "omop")
for _name, _command in {
    "mapping-report": mapping_report_command, "serve": serve_command, "synth": synth_command,
    "dicom": dicom_group, "features": features_command, "query": query_command, "audit": audit_group,
    "config": config_group, "approvals": approvals_group, "concordance": concordance_command,
    "forecast": forecast_command, "flower-key": flower_key_command, "flower-pins": flower_pins_command,
    "supernode": supernode_run_command, "attach": attach_command, "secure": secure_group,
}.items():
    main.add_command(_command, _name)
