"""``radfed-node`` commands for DICOM: ``ingest dicom``, ``dicom listen``, ``dicom pull``, ``features``.

Defaults come from node.toml's ``[dicom]`` table (``ae_title``, ``port``, ``host``, ``move_port``,
``patient_id_issuer``: the IssuerOfPatientID of the site's MRNs when several issuers arrive;
``private_sop_classes``: vendor storage classes the listener accepts besides the standard ones);
options override them.  Bad input never stops a command: it is quarantined and counted in the
summary.  Exit codes (cdm.errors, so cron and systemd can alert):

* ``ingest dicom``: 0 every file indexed (or a duplicate copy, or a DICOMDIR); 3 something was
  quarantined; 1 the CDM could not be written;
* ``dicom listen``: on SIGINT/SIGTERM, 0 if nothing received was quarantined, 3 otherwise; 1 when it
  cannot listen;
* ``dicom pull``: 0 every instance the PACS listed is at the node and nothing was quarantined; 3
  something is missing (the summary says which series, and the PACS's final status) or was
  quarantined; 1 the PACS cannot be reached, refuses us, or fails a query;
* 2 for bad options or a database without a CDM.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

import click

from cdm.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE


def _config(ctx: click.Context):
    return ctx.find_root().obj


def _engine(ctx: click.Context):
    return _config(ctx).writable_cdm(ctx.command_path)


def _issuer(ctx: click.Context) -> str | None:
    value = _config(ctx).section("dicom").get("patient_id_issuer")
    return str(value) if value else None


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command("dicom")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.pass_context
def ingest_dicom_command(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Index DICOM files, folders or DICOMDIRs (headers only) into image_occurrence."""
    from node.dicom.index import index_paths

    report = index_paths(_engine(ctx), paths, progress=lambda n: click.echo(f"  {n:,} files", err=True),
                         issuer=_issuer(ctx))
    click.echo(report.summary())
    sys.exit(report.exit_code)


@click.group("dicom")
def dicom_group() -> None:
    """The node's DICOM network services: Storage SCP and PACS pull."""


@dicom_group.command("listen")
@click.option("--port", type=int, help="TCP port (default [dicom] port, else 11112).")
@click.option("--ae-title", help="Our AE title (default [dicom] ae_title, else RADFED).")
@click.option("--host", help="Address to bind (default [dicom] host, else 127.0.0.1).")
@click.option("--features", "with_features", is_flag=True,
              help="Extract features in the background as segmentations arrive.")
@click.pass_context
def listen_command(ctx: click.Context, port: int | None, ae_title: str | None, host: str | None,
                   with_features: bool) -> None:
    """Run a Storage SCP: store received instances under the data dir and index them."""
    from node.dicom.features import FeatureWorker
    from node.dicom.scp import StorageSCP

    config = _config(ctx)
    section = config.section("dicom")
    scp = StorageSCP(_engine(ctx), config.data_dir, ae_title or section.get("ae_title", "RADFED"),
                     host or section.get("host", "127.0.0.1"), port if port is not None else int(section.get("port", 11112)),
                     issuer=_issuer(ctx), extra_sop_classes=tuple(section.get("private_sop_classes", ())))
    try:
        bound = scp.start()
    except OSError as exc:
        _fail(f"cannot listen on {scp.host}:{scp.port}: {exc.strerror or exc}")
    worker = FeatureWorker(scp.store.indexer.engine) if with_features else None
    if worker is not None:
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        scp.store.indexed_handlers.append(worker.on_indexed)
    click.echo(f"listening as {scp.ae.ae_title} on {scp.host}:{bound}, storing under {config.data_dir / 'dicom'}",
               err=True)
    import signal
    import threading

    stop = threading.Event()
    # systemd stops with SIGINT (deploy/systemd); SIGTERM (kill, docker stop) ends the same way.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        scp.stop()
        click.echo(f"received {scp.store.stored} instances; {scp.store.report.summary()}", err=True)
        if worker is not None:
            worker.join()
            worker.stop()
            click.echo(f"features: {worker.report.summary()}", err=True)
    sys.exit(scp.store.report.exit_code)


@dicom_group.command("pull")
@click.option("--pacs", required=True, help="HOST:PORT of the PACS.")
@click.option("--aet", help="Our AE title (the move destination the PACS knows).")
@click.option("--called-aet", required=True, help="The PACS's AE title.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y%m%d"]), help="Only studies on or after DATE.")
@click.option("--patient", help="Only this PatientID.")
@click.option("--mode", type=click.Choice(["move", "get"]), default="move", show_default=True)
@click.option("--move-port", type=int, help="Port our C-MOVE destination listens on (default [dicom] move_port).")
@click.option("--force", is_flag=True, help="Retrieve series the node already holds complete too.")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Retries of a series whose instances did not all arrive.")
@click.pass_context
def pull_command(ctx, pacs, aet, called_aet, since, patient, mode, move_port, force, retries) -> None:
    """Query a PACS (C-FIND) and retrieve the matching studies (C-MOVE or C-GET) series by series.

    Skips series the node already holds complete (--force to fetch them again), checks each final
    C-MOVE/C-GET status and what arrived against what the PACS listed, retries what is missing,
    and reports expected / received / failed per study.  Exit 3 when anything is missing."""
    from node.dicom.pull import PullError, pull

    config = _config(ctx)
    section = config.section("dicom")
    aet = aet or section.get("ae_title", "RADFED")
    if mode == "move" and move_port is None:
        move_port = int(section.get("move_port", section.get("port", 11112)))
    try:
        report = pull(_engine(ctx), config.data_dir, pacs, aet, called_aet, patient=patient,
                      since=since.date() if isinstance(since, dt.datetime) else None, mode=mode,
                      move_port=move_port or 0, issuer=_issuer(ctx), force=force, retries=retries)
    except PullError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:
        _fail(f"cannot listen for C-MOVE on port {move_port}: {exc.strerror or exc}")
    click.echo(report.summary())
    sys.exit(report.exit_code)


@click.command("features")
@click.option("--series", "series_uid", help="A SEG series, or an image series whose SEGs to use.")
@click.option("--all", "all_", is_flag=True, help="Every indexed segmentation.")
@click.pass_context
def features_command(ctx: click.Context, series_uid: str | None, all_: bool) -> None:
    """Radiomic and parametric-map features from segmentations -> image_feature."""
    from node.dicom.features import extract_features

    if bool(series_uid) == all_:
        raise click.UsageError("give exactly one of --series UID or --all")
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    report = extract_features(_engine(ctx), series_uid)
    if series_uid and report.segmentations == 0:
        _fail(f"no indexed segmentation is or references series {series_uid}", EXIT_USAGE)
    click.echo(report.summary())
    sys.exit(EXIT_PARTIAL if report.quarantined else EXIT_OK)
