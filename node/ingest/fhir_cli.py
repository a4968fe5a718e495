"""``radfed-node ingest fhir`` and ``radfed-node mapping-report``.

The MRN system comes from node.toml ``[fhir] mrn_system`` (default ``urn:radfed:mrn``).  Bad input
is quarantined and counted, never fatal.  Exit status (:mod:`cdm.errors`): 0 everything loaded
(or unchanged, or skipped as a type radfed keeps no rows for); 3 the run finished but something was
quarantined, or references wait for resources not loaded yet (read the summary; nothing was lost);
2 a missing CDM, a path that does not exist or a bad option (one ``error:`` line); 1 the run
failed.  A run waiting for other runs of the same PostgreSQL CDM says so on stderr every 30 s and
gives up after ``--wait-timeout`` seconds (then exit 3 if anything was still waiting for them).
"""

from __future__ import annotations

import json
import sys

import click

from cdm.errors import EXIT_PARTIAL
from node.fhir_profile import DEFAULT_MRN_SYSTEM


def _engine(ctx: click.Context):
    return ctx.find_root().obj.writable_cdm(ctx.command_path)


class _Bar:
    """A tqdm progress bar over the bytes of the input (shown on a terminal only)."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.enabled = enabled

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="fhir", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report_wait(what: str, holders, waited: float) -> None:
    """Say on stderr which runs this one waits for (every 30 s while it waits)."""
    names = "; ".join(h.describe() for h in holders) or "runs that just ended"
    click.echo(f"waiting for {len(holders) or 'other'} {what} ({waited:.0f} s so far): {names}", err=True)


@click.command("fhir")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5_000, show_default=True,
              help="Resources per transaction.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Processes that parse, validate and map while this one writes (default: one per core "
                   "but one, at least one, for inputs over 4 MB; 0: none). The result does not depend on it.")
@click.option("--force", is_flag=True,
              help="Re-map resources even when unchanged since the last run (after loading vocabularies).")
@click.option("--wait-timeout", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="PostgreSQL: stop waiting for other ingest runs of the same CDM after SECONDS and finish "
                   "with what it holds then (default: wait until they have loaded).")
@click.pass_context
def fhir_command(ctx: click.Context, paths: tuple[str, ...], as_json: bool, batch_size: int,
                 progress: bool | None, workers: int | None, force: bool, wait_timeout: float | None) -> None:
    """Load FHIR R4 Bundles (.json) and Bulk Data NDJSON (.ndjson[.gz]) files or folders into the CDM."""
    from node.ingest.engine import ingest_paths

    config = ctx.find_root().obj
    mrn_system = str(config.section("fhir").get("mrn_system") or DEFAULT_MRN_SYSTEM)
    engine = _engine(ctx)
    bar = _Bar(sys.stderr.isatty() if progress is None else progress)
    try:
        summary = ingest_paths(engine, paths, mrn_system=mrn_system, batch_size=batch_size, progress=bar,
                               workers=workers, force=force, waiting=_report_wait, wait_timeout=wait_timeout)
    finally:
        bar.close()
    click.echo(json.dumps(summary.as_dict(), indent=2) if as_json else summary.text())
    if summary.partial:
        ctx.exit(EXIT_PARTIAL)


@click.command("mapping-report")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(1), help="Only the N most frequent codes.")
@click.pass_context
def mapping_report_command(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """List the source codes without a standard concept, most frequent first."""
    from node.ingest.mapping_report import report_json, report_text, unmapped_codes

    codes = unmapped_codes(_engine(ctx))
    click.echo(json.dumps(report_json(codes[:limit]), indent=2) if as_json else report_text(codes, limit))
