"""``radfed-node attach`` and ``radfed-node ingest omop``: the two ways in for a site that already
runs OMOP (docs/site-admin-guide.md, "Sites that already run OMOP").

Exit status: 0 done; 2 the database or input cannot be used as given (attach refused: nothing was
written); 3 finished, but rows were quarantined, columns ignored or indexes could not be created.
"""

from __future__ import annotations

import json
import sys

import click

from cdm.db import open_engine, with_layout
from cdm.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE


@click.command("attach")
@click.option("--cdm-schema", help="PostgreSQL: schema of the CDM's clinical tables (e.g. cdm).")
@click.option("--vocabulary-schema", help="PostgreSQL: schema of the vocabulary (default: the CDM's).")
@click.option("--radfed-schema", help="PostgreSQL: schema radfed owns for its own tables (default radfed).")
@click.option("--cdm-file", type=click.Path(exists=True, dir_okay=False),
              help="SQLite: the CDM file (attached read-only); --db is then radfed's own file.")
@click.option("--vocabulary-file", type=click.Path(exists=True, dir_okay=False),
              help="SQLite: a separate vocabulary file (default: in the CDM file).")
@click.option("--check", "check_only", is_flag=True, help="Only check and report; write nothing.")
@click.option("--create-indexes", is_flag=True,
              help="Create the indexes radfed's queries use that the CDM lacks (on the site's CDM).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def attach_command(ctx: click.Context, cdm_schema, vocabulary_schema, radfed_schema, cdm_file, vocabulary_file,
                   check_only: bool, create_indexes: bool, as_json: bool) -> None:
    """Serve an existing OMOP CDM (v5.3 or v5.4) in place: radfed reads it and never writes it.

    The CDM is checked first (version, tables, columns, types); if anything is wrong nothing is
    written and the report says what.  radfed's own tables go to --radfed-schema (PostgreSQL) or
    to the --db file (SQLite)."""
    from cdm.attach import AttachRefused, attach_cdm, inspect_cdm

    config = ctx.find_root().obj
    given = {"cdm_schema": cdm_schema, "vocabulary_schema": vocabulary_schema, "radfed_schema": radfed_schema,
             "cdm_file": cdm_file, "vocabulary_file": vocabulary_file}
    url = with_layout(config.database_url, {k: v for k, v in given.items() if v})
    engine = open_engine(url, check=False)  # a refused attach must not even create radfed's SQLite file
    try:
        report = inspect_cdm(engine) if check_only else attach_cdm(engine, config.site_name, create_indexes)
    except AttachRefused as refused:
        report = refused.report
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "database_url": _shown(url)}, indent=2))
    else:
        click.echo(report.text(), err=not report.ok)
        if report.ok and url != config.database_url:
            click.echo(f"\nnode.toml:\n  [database]\n  url = \"{_shown(url)}\"")
    if not report.ok:
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_PARTIAL if any(i.error for i in report.indexes) else EXIT_OK)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    if "://" not in url:
        return url
    return make_url(url).render_as_string(hide_password=True).replace("postgresql+psycopg://", "postgresql://", 1)


@click.command("omop")
@click.argument("source", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def ingest_omop_command(ctx: click.Context, source: str, as_json: bool) -> None:
    """Load an OMOP CDM export: a folder or .zip of CSV files, one per table (PERSON.csv or person.csv,
    comma- or tab-separated).  Rows keep their ids; re-running loads only what changed."""
    from node.omop.export import ingest_export

    engine = ctx.find_root().obj.writable_cdm("ingest omop")
    progress = (lambda name, n: click.echo(f"  {name}: {n:,} rows", err=True)) if sys.stderr.isatty() else None
    summary = ingest_export(engine, source, progress=progress)
    click.echo(json.dumps(summary.as_dict(), indent=2, default=str) if as_json else summary.text())
    sys.exit(EXIT_PARTIAL if summary.partial else EXIT_OK)
