"""Generate a synthetic multi-site radiogenomic network: per site a FHIR bulk export, DICOM files and a
vocabulary mapping file; one ground truth for the whole network.

Layout::

    OUT/ground_truth.json, OUT/ground_truth_patients.ndjson
    OUT/site-N/fhir/<Type>.000.ndjson, manifest.json, log.ndjson     (FHIR Bulk Data export)
    OUT/site-N/dicom/<PatientID>/<StudyUID>/<SeriesUID>/<n>.dcm      (DICOM Part 10 files)
    OUT/site-N/vocabulary/source_to_concept_map.csv                  (the site's local-code map)

Patients are generated one at a time and written as they are built (streaming); each draws from
its own random stream (seed, site, patient), so output is byte-identical for a seed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson

from cdm.errors import EXIT_USAGE, RadfedError
from cdm.vocabulary import vocabulary_for_uri
from node.synth import codes as C
from node.synth import rare
from node.synth.codes import CodeBook
from node.synth.cohorts import COHORT_FUNCTIONS, effect_sizes
from node.synth.context import CUTOFF, PatientContext
from node.synth.fhir_writer import BulkExportWriter
from node.synth.ground_truth import GroundTruth
from node.synth.ids import resource_id, rng
from node.synth.sites import COHORTS, Site, allocate, make_sites, write_source_to_concept_map

GENERATOR_VERSION = "1"


class OutputNotEmpty(RadfedError, ValueError):
    """OUT holds data the generator did not write (it only ever replaces its own earlier output)."""

    exit_code = EXIT_USAGE


@dataclass
class SynthOptions:
    sites: int = 3
    patients: int = 300
    seed: int = 0
    dicom: bool = True
    dicom_fraction: float = 0.25
    bad_records: bool = True
    max_lines: int = 200_000


def generate(out: str | Path, options: SynthOptions, progress=None) -> dict:
    """Write the network to ``out`` (emptied of a previous generator run first); returns the ground truth."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = list(out.glob("site-*"))
    if previous and not (out / "ground_truth.json").exists():
        raise OutputNotEmpty(f"{str(out)!r} holds site folders that no earlier synth run wrote; choose an empty folder")
    for old in previous:
        shutil.rmtree(old)
    if options.patients < options.sites:
        raise ValueError(f"{options.patients} patients cannot fill {options.sites} sites")
    truth = GroundTruth(out)
    truth.params = effect_sizes()
    codebook = CodeBook()
    sites = make_sites(options.sites)
    counts = allocate(sites, options.patients)
    dicom_totals = {"files": 0, "series": 0, "patients": 0}
    resources = 0
    for site, n in zip(sites, counts):
        summary = _generate_site(out, site, n, options, codebook, truth, progress)
        resources += summary["resources"]
        for k in dicom_totals:
            dicom_totals[k] += summary["dicom"][k]
        truth.sites.append({**site.describe(), **summary})
    return truth.close(
        generator={"name": "radfed-node synth", "version": GENERATOR_VERSION},
        options={"sites": options.sites, "patients": options.patients, "seed": options.seed, "dicom": options.dicom,
                 "dicom_fraction": options.dicom_fraction, "bad_records": options.bad_records},
        cutoff_date=CUTOFF.isoformat(),
        resources=resources,
        dicom=dicom_totals,
        codes=codebook.listing(),
        code_systems={name: {"uri": uri, "vocabulary_id": vocabulary_for_uri(uri)} for name, uri in
                      (("diagnosis_local", C.SYNTH_DIAGNOSIS), ("drug_local", C.SYNTH_DRUG), ("device_local", C.SYNTH_DEVICE))},
        query_references=query_references(),
        rare_diseases=[{"code": code, "system": C.SYNTH_DIAGNOSIS, "name": name, "description": text,
                        "phenotypes": [{"code": hp, "display": rare.HP[hp], "frequency": f} for hp, f in profile]}
                       for code, name, text, profile in rare.DISEASES],
        cohorts=list(COHORTS),
    )


def query_references() -> dict:
    """``SYSTEM:code`` references a query spec uses to find each planted signal (docs/analysis-rounds.md)."""
    rd = vocabulary_for_uri(C.SYNTH_DIAGNOSIS)
    return {
        "ependymoma_subtype": {"PFA": "RADFED:ependymoma_pfa", "PFB": "RADFED:ependymoma_pfb"},
        "ependymoma": "ICDO3:9391/3",
        "liposarcoma_subtype": {"ALT": f"ICDO3:{C.ALT[1]}", "myxoid": f"ICDO3:{C.MYXOID_LPS[1]}"},
        "nf1": f"SNOMED:{C.NF1_DISORDER[1]}", "plexiform_neurofibroma": f"ICDO3:{C.PLEXIFORM_NF[1]}",
        "mpnst": f"ICDO3:{C.MPNST[1]}", "lung_adenocarcinoma": f"ICDO3:{C.LUNG_ADENO[1]}",
        "glioblastoma": f"ICDO3:{C.GLIOBLASTOMA[1]}",
        "genes": {g: f"HGNC:{h}" for g, h in C.GENES.items()},
        "image_features": {f: f"RADFED:{f}" for f in (
            "adc_mean", "adc_min", "calcification", "midline_location", "lesion_volume", "fat_fraction",
            "septa_thickness", "nonfatty_nodule", "t2_signal_ratio", "enhancement_slope", "suv_max",
            "necrosis_fraction", "target_sign", "longest_diameter", "sum_longest_diameters")},
        "ctdna_tumour_fraction": "RADFED:ctdna_tumour_fraction", "ctdna_detected": "RADFED:ctdna_detected",
        "disease_progression": "RADFED:progression",
        "labs": {lab: f"LOINC:{code}" for lab, (code, _, _) in C.LABS.items()},
        "heart_rate": "LOINC:8867-4", "step_count": "LOINC:55423-8",
        "rare_diseases": {code: f"{rd}:{code}" for code, *_ in rare.DISEASES},
        "time_zero": {"lung": "MedicationStatement osimertinib start = first ctDNA draw (day 0)"},
    }


def _generate_site(out: Path, site: Site, n: int, options: SynthOptions, codebook: CodeBook, truth: GroundTruth,
                   progress) -> dict:
    root = out / site.name
    writer = BulkExportWriter(root / "fhir", base_url=site.base_url + "/bulk/" + f"synth-{options.seed}",
                              transaction_time=f"{CUTOFF.isoformat()}T23:59:59Z", max_lines=options.max_lines)
    mapped = write_source_to_concept_map(site, root / "vocabulary" / "source_to_concept_map.csv")
    dicom = None
    if options.dicom:
        from node.synth.dicom_writer import DicomSink  # pydicom/highdicom only when DICOM is wanted

        dicom = DicomSink(root / "dicom", site, options.seed, options.dicom_fraction, truth, codebook)
    imaging = dicom.study if dicom else (lambda ctx, spec: None)
    mix = [site.mix[c] for c in COHORTS]
    cumulative = [sum(mix[: i + 1]) / sum(mix) for i in range(len(mix))]
    per_cohort = {c: 0 for c in COHORTS}
    for index in range(n):
        prng = rng(options.seed, site.index, index)
        u = prng.random()
        cohort = COHORTS[next(i for i, c in enumerate(cumulative) if u < c or i == len(cumulative) - 1)]
        ctx = PatientContext(options.seed, site, index, prng, codebook, writer.write, truth, imaging)
        COHORT_FUNCTIONS[cohort](ctx)
        truth.patient(ctx.record)
        per_cohort[cohort] += 1
        if options.bad_records and index == n // 2:
            _bad_fhir_records(writer, site, options.seed, ctx, truth)
        if progress:
            progress(site.name, index + 1, n)
    if dicom is not None and options.bad_records:
        dicom.corrupt_file()
    manifest = writer.close(export_id=f"synth-{options.seed}-{site.name}")
    return {
        "patients": n,
        "patients_by_cohort": per_cohort,
        "resources": writer.resources,
        "resources_by_type": _by_type(manifest),
        "local_lab_mappings": mapped,
        "fhir_dir": f"{site.name}/fhir",
        "dicom_dir": f"{site.name}/dicom" if dicom else None,
        "vocabulary_map": f"{site.name}/vocabulary/source_to_concept_map.csv",
        "dicom": dicom.totals() if dicom else {"files": 0, "series": 0, "patients": 0},
    }


def _by_type(manifest: dict) -> dict:
    totals: dict[str, int] = {}
    for f in manifest["output"]:
        totals[f["type"]] = totals.get(f["type"], 0) + f["count"]
    return dict(sorted(totals.items()))


def _bad_fhir_records(writer: BulkExportWriter, site: Site, seed: int, ctx: PatientContext, truth: GroundTruth) -> None:
    """Plant one of each kind of bad FHIR input a real export contains, and record where it is."""
    day = ctx.diagnosis_date().isoformat()
    # 1. a line cut off mid-object (a truncated transfer): not JSON at all
    bad_id = resource_id(seed, site.index, "bad", "truncated")
    line = orjson.dumps({"resourceType": "Observation", "id": bad_id, "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}})
    name, no = writer.write_raw("Observation", line[: len(line) // 2])
    truth.bad(site=site.name, kind="malformed_json", file=f"{site.name}/fhir/{name}", line=no, resource_type="Observation",
              resource_id=bad_id, expected="quarantined: not valid JSON")
    # 2. a resource that parses as JSON but fails FHIR R4 validation (no code, status outside its value set)
    bad_id = resource_id(seed, site.index, "bad", "invalid")
    name, no = writer.write({"resourceType": "Observation", "id": bad_id, "status": "finalised",
                             "subject": {"reference": f"Patient/{ctx.patient_id}"}, "effectiveDateTime": day,
                             "valueQuantity": {"value": "high", "unit": "g/dL"}})
    truth.bad(site=site.name, kind="invalid_resource", file=f"{site.name}/fhir/{name}", line=no, resource_type="Observation",
              resource_id=bad_id, expected="quarantined: fails FHIR R4 validation (Observation.code missing, bad value)")
    # 3. a valid Condition whose subject is a patient the export does not contain
    bad_id = resource_id(seed, site.index, "bad", "dangling")
    missing = resource_id(seed, site.index, "bad", "no-such-patient")
    name, no = writer.write({"resourceType": "Condition", "id": bad_id,
                             "clinicalStatus": {"coding": [{"system": C.CONDITION_CLINICAL, "code": "active"}]},
                             "code": {"coding": [{"system": C.ICDO3, "code": "8140/3", "display": "Adenocarcinoma, NOS"}]},
                             "subject": {"reference": f"Patient/{missing}"}, "onsetDateTime": day})
    truth.bad(site=site.name, kind="missing_patient_reference", file=f"{site.name}/fhir/{name}", line=no,
              resource_type="Condition", resource_id=bad_id, missing_reference=f"Patient/{missing}",
              expected="quarantined: subject references a patient not in the export")
