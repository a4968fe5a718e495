"""``radfed-node query`` (the site's dry run) and ``radfed-node audit verify|export|show|new-period``."""

from __future__ import annotations

import json
import sys
import uuid

import click

from cdm.db import open_engine, require_cdm
from cdm.atlas.refusals import Untranslatable
from cdm.atlas.translate import spec_from_file
from cdm.errors import EXIT_USAGE
from cdm.spec import SpecError, load_spec, parse_spec, spec_codes, spec_json_schema
from cdm.vocabulary import UnknownCode, Vocabulary
from node.audit import AuditLog
from node.execute import run_request


def _config(ctx):
    return ctx.find_root().obj


@click.command("query")
@click.argument("spec_path", required=False, type=click.Path(dir_okay=False))
@click.option("--requester", default="site-admin", show_default=True, help="Whose request to simulate.")
@click.option("--json", "as_json", is_flag=True, help="Print the full response as JSON.")
@click.option("--schema", is_flag=True, help="Print the spec JSON Schema and exit.")
@click.option("--atlas", "atlas_path", type=click.Path(exists=True, dir_okay=False),
              help="An ATLAS cohort definition (Circe JSON) as the cohort, instead of SPEC.")
@click.option("--analysis", help="With --atlas: the analysis (YAML/JSON inline or a file; default a count).")
@click.pass_context
def query_command(ctx, spec_path, requester, as_json, schema, atlas_path, analysis):
    """Run SPEC (YAML/JSON) locally and print what this node would release."""
    if schema:
        click.echo(json.dumps(spec_json_schema(), indent=2))
        return
    if bool(spec_path) == bool(atlas_path):
        raise click.UsageError("SPEC is required (or --atlas DEFINITION, or --schema)")
    try:
        spec = _atlas_spec(atlas_path, analysis) if atlas_path else load_spec(spec_path)
    except SpecError as exc:
        click.echo(f"BAD_SPEC: {exc}", err=True)
        sys.exit(1)
    config = _config(ctx)
    engine = open_engine(config.database_url)
    require_cdm(engine)
    response = run_request(engine, config, {"request_id": str(uuid.uuid4()), "requester": requester,
                                            "spec": spec.model_dump(mode="json", by_alias=True)})
    for warning in [] if as_json else response.get("warnings") or []:  # e.g. UNKNOWN_CODE, on stderr
        click.echo(f"warning: {warning}", err=True)
    if not as_json:  # the site's own view: which codes have rows here (never part of a release)
        for line in code_usage(engine, spec):
            click.echo(f"code {line}", err=True)
    if as_json:
        click.echo(json.dumps(response, indent=2))
    elif response["status"] == "ok":
        click.echo(json.dumps(response["result"], indent=2))
    else:
        click.echo(f"{response['status']} {response['code']}: {response['message']}")
    sys.exit(0 if response["status"] == "ok" else 1)


def _atlas_spec(path: str, analysis: str | None):
    """The spec of an ATLAS definition; one that does not translate exactly is refused (exit 2), each
    problem named by its JSON path."""
    try:
        return parse_spec(spec_from_file(path, analysis))
    except Untranslatable as exc:
        click.echo(exc.report(path, "nothing was run"), err=True)
        sys.exit(EXIT_USAGE)
    except (ValueError, OSError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise click.UsageError(str(exc)) from None


def code_usage(engine, spec) -> list[str]:
    """One line per code of ``spec``: the rows carrying it here, ``code known here, 0 rows`` (a
    concept this node has, with no data: often a local code whose mapping is not loaded yet) or
    ``unknown code``."""
    vocabulary = Vocabulary(engine)
    lines = []
    for reference in spec_codes(spec.model_dump(mode="json", by_alias=True)):
        try:
            concept_id, found = vocabulary.describe(reference)
        except UnknownCode:
            continue  # a gene symbol (variant criteria take plain symbols too)
        lines.append(f"{reference}: " + (f"concept {concept_id}, {found}" if concept_id is not None else found))
    return lines


@click.group("audit")
def audit_group():
    """The node's hash-chained audit log."""


@audit_group.command("verify")
@click.pass_context
def audit_verify(ctx):
    """Check the chain: detects an edited, removed or reordered entry."""
    log = AuditLog.for_config(_config(ctx))
    problems = log.verify()
    for p in problems:
        click.echo(p)
    click.echo("audit log intact" if not problems else f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


@audit_group.command("export")
@click.pass_context
def audit_export(ctx):
    """Write every entry as JSON lines to stdout."""
    for entry in AuditLog.for_config(_config(ctx)).entries():
        click.echo(json.dumps(entry, sort_keys=True))


@audit_group.command("show")
@click.argument("entry")
@click.pass_context
def audit_show(ctx, entry):
    """One request as the site saw it: ENTRY is its sequence number or request id.  Prints the
    decision, what was released, and the canonical spec with every round parameter (beta, thresholds)."""
    entries = AuditLog.for_config(_config(ctx)).entries()
    found = [e for e in entries if str(e.get("seq")) == entry or e.get("request_id") == entry]
    if not found:
        click.echo(f"error: no audit entry {entry!r} (give a sequence number or a request id)", err=True)
        sys.exit(1)
    for e in found:
        click.echo(json.dumps(e, sort_keys=True, indent=2))


@audit_group.command("new-period")
@click.option("--note", default=None, help="Why (kept with the period).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def audit_new_period(ctx, note, yes):
    """Start a new release period: the site-wide release auditor forgets the history it audits against.

    Only when the earlier releases no longer describe the same persons' values (a new data snapshot):
    otherwise old and new releases can still be combined (docs/node-policy.md)."""
    import getpass

    from node.disclosure.release_history import new_period
    from node.state import state_engine

    if not yes:
        click.confirm("Start a new release period (the auditor's history starts empty)?", abort=True)
    period = new_period(state_engine(_config(ctx)), getpass.getuser(), note)
    click.echo(f"release period {period} started")
