"""``radfed-node synth``: write a synthetic multi-site radiogenomic network to a folder."""

from __future__ import annotations

import time

import click

from node.synth.generator import OutputNotEmpty, SynthOptions, generate


@click.command("synth")
@click.option("--sites", type=click.IntRange(1, 50), default=3, show_default=True, help="Number of sites.")
@click.option("--patients", type=click.IntRange(1), default=300, show_default=True, help="Patients over all sites.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical output.")
@click.option("--no-dicom", is_flag=True, help="FHIR only (fast): ImagingStudy resources still name the series.")
@click.option("--dicom-fraction", type=click.FloatRange(0.0, 1.0), default=0.25, show_default=True,
              help="Share of imaged patients whose studies are written as DICOM files.")
@click.option("--no-bad-records", is_flag=True, help="Leave out the deliberately bad records.")
@click.argument("out", type=click.Path(file_okay=False))
def synth_command(sites: int, patients: int, seed: int, no_dicom: bool, dicom_fraction: float, no_bad_records: bool,
                  out: str) -> None:
    """Generate synthetic sites (FHIR bulk NDJSON, DICOM, vocabulary map) and OUT/ground_truth.json."""
    if patients < sites:
        raise click.BadParameter(f"{patients} patients cannot fill {sites} sites", param_hint="--patients")
    started = time.perf_counter()
    try:
        truth = generate(out, SynthOptions(sites=sites, patients=patients, seed=seed, dicom=not no_dicom,
                                           dicom_fraction=dicom_fraction, bad_records=not no_bad_records))
    except OutputNotEmpty as exc:
        raise click.ClickException(str(exc)) from None
    for site in truth["sites"]:
        click.echo(f"{site['name']}: {site['patients']} patients, {site['resources']:,} FHIR resources, "
                   f"{site['dicom']['files']:,} DICOM files ({site['kind']}, {site['vendor']})")
    click.echo(f"ground truth: {out}/ground_truth.json ({len(truth['bad_records'])} bad records planted) "
               f"in {time.perf_counter() - started:.1f} s")
