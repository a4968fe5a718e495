"""FHIR R4 resource builders in radfed's profile (:mod:`node.fhir_profile`).

Plain dicts, built in a fixed key order so the serialised NDJSON is reproducible.  Each builder
names the guide it follows; the codes it writes pass through the :class:`~node.synth.codes.CodeBook`.
"""

from __future__ import annotations

import datetime as dt

from node import fhir_profile as fp
from node.synth import codes as C
from node.synth.codes import CodeBook


def ref(resource: dict) -> dict:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def iso(day: dt.date | dt.datetime) -> str:
    if isinstance(day, dt.datetime):
        return day.strftime("%Y-%m-%dT%H:%M:%SZ")
    return day.isoformat()


def quantity(value: float, unit: str, digits: int = 4) -> dict:
    return {"value": round(float(value), digits), "unit": unit, "system": fp.UCUM, "code": unit}


def _resource(resource_type: str, rid: str, status: str) -> dict:
    """What every FHIR R4 resource built here starts with: its type, id and status."""
    return {"resourceType": resource_type, "id": rid, "status": status}


def _category(cb: CodeBook, code: str) -> list[dict]:
    return [{"coding": [cb.coding(fp.OBSERVATION_CATEGORY, code)]}]


def patient(rid: str, mrn: str, mrn_system: str, sex: str, birth: dt.date, deceased: dt.date | None, site_org: str) -> dict:
    """Patient with the site's MRN identifier (v2-0203 type MR), as the DICOM PatientID matches it."""
    out = {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": mrn_system,
            "value": mrn,
        }],
        "name": [{"use": "official", "family": "Synth", "given": [f"P{mrn}"]}],
        "gender": sex,
        "birthDate": birth.isoformat(),
        "managingOrganization": {"display": site_org},
    }
    if deceased is not None:
        out["deceasedDateTime"] = deceased.isoformat()
    return out


def encounter(rid: str, subject: dict, day: dt.date, cb: CodeBook) -> dict:
    return {
        **_resource("Encounter", rid, "finished"),
        "class": cb.coding(C.ENCOUNTER_CLASS, "AMB", "ambulatory"),
        "subject": ref(subject),
        "period": {"start": iso(day), "end": iso(day)},
    }


def condition(rid: str, subject: dict, codings: list[tuple], onset: dt.date, cb: CodeBook,
              encounter_res: dict | None = None, category: str = "encounter-diagnosis",
              body_site: tuple | None = None, text: str | None = None) -> dict:
    out = {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {"coding": [cb.coding(C.CONDITION_CLINICAL, "active")]},
        "category": [{"coding": [cb.coding(C.CONDITION_CATEGORY, category)]}],
        "code": {"coding": [cb.coding(*c) for c in codings]},
        "subject": ref(subject),
    }
    if text:
        out["code"]["text"] = text
    if body_site:
        out["bodySite"] = [cb.concept(body_site)]
    if encounter_res is not None:
        out["encounter"] = ref(encounter_res)
    out["onsetDateTime"] = iso(onset)
    return out


def _lab_observation(rid: str, subject: dict, coding: dict, day: dt.date, cb: CodeBook, specimen: dict | None = None,
                     **value) -> dict:
    """A laboratory Observation (FHIR R4) of ``subject`` on ``day``, on ``specimen`` when given; ``value``:
    its ``value[x]`` (and ``component``), in that order."""
    out = {
        **_resource("Observation", rid, "final"),
        "category": _category(cb, "laboratory"),
        "code": {"coding": [coding]},
        "subject": ref(subject),
        "effectiveDateTime": iso(day),
    }
    if specimen is not None:
        out["specimen"] = ref(specimen)
    return {**out, **value}


def lab(rid: str, subject: dict, coding: tuple, value: float, unit: str, day: dt.date, cb: CodeBook) -> dict:
    return _lab_observation(rid, subject, cb.coding(*coding), day, cb, valueQuantity=quantity(value, unit, 2))


def specimen(rid: str, subject: dict, kind: tuple, day: dt.date, cb: CodeBook, parent_procedure: dict | None = None) -> dict:
    out = {
        **_resource("Specimen", rid, "available"),
        "type": cb.concept(kind),
        "subject": ref(subject),
        "collection": {"collectedDateTime": iso(day)},
    }
    if kind[1] == fp.PLASMA_SPECIMEN:
        # The profile also accepts a cfDNA type code; carrying both helps sites that key on either.
        out["type"]["coding"].append(cb.coding(fp.RADFED, fp.CFDNA_TYPE, "Cell-free DNA"))
    if parent_procedure is not None:
        out["collection"]["method"] = cb.concept(C.BIOPSY)
    return out


def variant(rid: str, subject: dict, spec: dict, gene: str, day: dt.date, cb: CodeBook, *,
            change: str, hgvs_c: str | None = None, hgvs_p: str | None = None, vaf: float | None = None,
            copy_number: float | None = None, partner: str | None = None, germline: bool = False) -> dict:
    """Genomics Reporting IG "Variant" Observation (LOINC 69548-6) with its components.

    ``hgvs_c`` names its reference sequence (``NM_005228.5:c.2573T>G``).  A fusion lists the 5'
    partner first (``partner``), then ``gene``.
    """
    comps = []
    genes = [partner, gene] if partner else [gene]
    for g in genes:
        comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.GENE_STUDIED, "Gene studied [ID]")]},
                      "valueCodeableConcept": {"coding": [cb.coding(fp.HGNC, C.GENES[g], g)]}})
    if hgvs_c:
        comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.HGVS_C, "DNA change (c.HGVS)")]},
                      "valueCodeableConcept": {"coding": [cb.coding(C.HGVS, hgvs_c)]}})
    if hgvs_p:
        comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.HGVS_P, "Amino acid change (pHGVS)")]},
                      "valueCodeableConcept": {"coding": [cb.coding(C.HGVS, hgvs_p)]}})
    if vaf is not None:
        comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.ALLELE_FREQUENCY, "Sample variant allelic frequency [NFr]")]},
                      "valueQuantity": quantity(vaf, "1")})
    if copy_number is not None:
        comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.COPY_NUMBER, "Genomic structural variant copy number")]},
                      "valueQuantity": quantity(copy_number, "1", 1)})
    comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.DNA_CHANGE_TYPE, "DNA change type")]},
                  "valueCodeableConcept": {"coding": [cb.coding(fp.SEQUENCE_ONTOLOGY, change)]}})
    comps.append({"code": {"coding": [cb.coding(fp.LOINC, fp.GENOMIC_SOURCE_CLASS, "Genomic source class")]},
                  "valueCodeableConcept": {"coding": [cb.coding(*(C.GERMLINE if germline else C.SOMATIC))]}})
    return _lab_observation(rid, subject, cb.coding(fp.LOINC, fp.VARIANT_ASSESSMENT, "Genetic variant assessment"),
                            day, cb, spec, valueCodeableConcept={"coding": [cb.coding(*C.PRESENT)]}, component=comps)


def ctdna_fraction(rid: str, subject: dict, spec: dict, fraction: float, day: dt.date, cb: CodeBook) -> dict:
    """Tumour fraction (0-1) of a plasma cfDNA specimen, RADFED ``ctdna_tumour_fraction``."""
    return _lab_observation(rid, subject, cb.coding(fp.RADFED, fp.CTDNA_TUMOUR_FRACTION, "ctDNA tumour fraction"),
                            day, cb, spec, valueQuantity=quantity(fraction, "1"))


def ctdna_detected(rid: str, subject: dict, spec: dict, detected: bool, day: dt.date, cb: CodeBook) -> dict:
    return _lab_observation(rid, subject, cb.coding(fp.RADFED, fp.CTDNA_DETECTED, "ctDNA detected"), day, cb, spec,
                            valueCodeableConcept={"coding": [cb.coding(*(C.DETECTED if detected else C.NOT_DETECTED))]})


def _series_components(cb: CodeBook, series_uid: str, finding: str) -> list[dict]:
    return [
        {"code": {"coding": [cb.coding(fp.DICOM_DCM, fp.SERIES_INSTANCE_UID, "Series Instance UID")]}, "valueString": series_uid},
        {"code": {"coding": [cb.coding(fp.DICOM_DCM, fp.FINDING, "Finding")]}, "valueString": finding},
    ]


def image_feature(rid: str, subject: dict, study: dict, series_uid: str, feature: str, value, unit: str,
                  day: dt.date, cb: CodeBook, finding: str = "lesion-1") -> dict:
    """Radiology finding (category imaging) coded by a RADFED image-feature concept, derivedFrom the study.

    Present/absent findings (``calcification``, ``target_sign``...) are sent as valueQuantity 1/0
    (unit ``1``), as OMOP stores them (value_as_number), so an ingest needs only the numeric path.
    """
    out = {
        **_resource("Observation", rid, "final"),
        "category": _category(cb, "imaging"),
        "code": {"coding": [cb.coding(fp.RADFED, feature)]},
        "subject": ref(subject),
        "effectiveDateTime": iso(day),
    }
    if isinstance(value, bool):
        out["valueQuantity"] = quantity(1 if value else 0, "1")
    else:
        out["valueQuantity"] = quantity(value, unit)
    out["derivedFrom"] = [ref(study)]
    out["component"] = _series_components(cb, series_uid, finding)
    return out


def disease_status(rid: str, subject: dict, cancer: dict, status: str, day: dt.date, cb: CodeBook,
                   evidence: dict | None = None) -> dict:
    """mCODE Cancer Disease Status (LOINC 97509-4), ``focus`` the cancer Condition."""
    out = {
        **_resource("Observation", rid, "final"),
        "code": {"coding": [cb.coding(fp.LOINC, fp.CANCER_DISEASE_STATUS, "Cancer disease status")]},
        "subject": ref(subject),
        "focus": [ref(cancer)],
        "effectiveDateTime": iso(day),
        "valueCodeableConcept": {"coding": [cb.coding(*C.DISEASE_STATUS[status])]},
    }
    if evidence is not None:
        out["derivedFrom"] = [ref(evidence)]
    return out


def imaging_study(rid: str, subject: dict, study_uid: str, day: dt.date, series: list[dict], cb: CodeBook,
                  body_site: tuple | None = None) -> dict:
    """ImagingStudy naming the DICOM study and series UIDs (identifier urn:dicom:uid, ``urn:oid:`` value).

    ``series``: dicts with uid, number, modality, description, instances.
    """
    out_series = []
    for s in series:
        entry = {
            "uid": s["uid"],
            "number": s["number"],
            "modality": cb.coding(fp.DICOM_DCM, s["modality"]),
            "description": s["description"],
            "numberOfInstances": s["instances"],
        }
        if body_site:
            entry["bodySite"] = cb.coding(*body_site)
        out_series.append(entry)
    return {
        "resourceType": "ImagingStudy",
        "id": rid,
        "identifier": [{"system": C.DICOM_UID, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [cb.coding(fp.DICOM_DCM, m) for m in sorted({s["modality"] for s in series})],
        "subject": ref(subject),
        "started": iso(dt.datetime.combine(day, dt.time(9, 0))),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s["instances"] for s in series),
        "series": out_series,
    }


def procedure(rid: str, subject: dict, code: tuple, day: dt.date, cb: CodeBook, body_site: tuple | None = None) -> dict:
    out = {
        **_resource("Procedure", rid, "completed"),
        "code": cb.concept(code),
        "subject": ref(subject),
        "performedDateTime": iso(day),
    }
    if body_site:
        out["bodySite"] = [cb.concept(body_site)]
    return out


def biopsy_location(rid: str, subject: dict, proc: dict, core: dict, study: dict, series_uid: str,
                    xyz, registration_error: float, habitat: str, border_mm: float, day: dt.date, cb: CodeBook) -> dict:
    """RADFED ``biopsy_location``: x/y/z (mm, patient LPS), registration error, habitat label, border distance."""
    def comp(code: str, **value):
        return {"code": {"coding": [cb.coding(fp.RADFED, code)]}, **value}

    return {
        **_resource("Observation", rid, "final"),
        "category": _category(cb, "imaging"),
        "partOf": [ref(proc)],
        "code": {"coding": [cb.coding(fp.RADFED, fp.BIOPSY_LOCATION, "Biopsy location in image coordinates")]},
        "subject": ref(subject),
        "effectiveDateTime": iso(day),
        "specimen": ref(core),
        "derivedFrom": [ref(study)],
        "component": [
            comp(fp.BIOPSY_X, valueQuantity=quantity(xyz[0], "mm", 2)),
            comp(fp.BIOPSY_Y, valueQuantity=quantity(xyz[1], "mm", 2)),
            comp(fp.BIOPSY_Z, valueQuantity=quantity(xyz[2], "mm", 2)),
            comp(fp.REGISTRATION_ERROR, valueQuantity=quantity(registration_error, "mm", 2)),
            comp(fp.HABITAT_LABEL, valueCodeableConcept={"coding": [cb.coding(fp.RADFED, habitat)]}),
            comp(fp.HABITAT_BORDER_DISTANCE, valueQuantity=quantity(border_mm, "mm", 2)),
            _series_components(cb, series_uid, "habitat-map")[0],
        ],
    }


def device(rid: str, subject: dict, cb: CodeBook, serial: str) -> dict:
    return {
        **_resource("Device", rid, "active"),
        "serialNumber": serial,
        "type": cb.concept(C.WEARABLE),
        "patient": ref(subject),
    }


def sampled(rid: str, subject: dict, dev: dict, loinc: tuple[str, str, str], start: dt.datetime,
            period_s: float, values, cb: CodeBook, digits: int = 0) -> dict:
    """A wearable series as ``valueSampledData`` (period in ms, origin 0, data space-separated)."""
    fmt = f"{{:.{digits}f}}"
    return {
        **_resource("Observation", rid, "final"),
        "category": _category(cb, "vital-signs" if loinc[0] == fp.HEART_RATE else "activity"),
        "code": {"coding": [cb.coding(fp.LOINC, loinc[0], loinc[1])]},
        "subject": ref(subject),
        "effectivePeriod": {"start": iso(start), "end": iso(start + dt.timedelta(seconds=period_s * len(values)))},
        "device": ref(dev),
        "valueSampledData": {
            "origin": {"value": 0, "unit": loinc[2], "system": fp.UCUM, "code": loinc[2]},
            "period": period_s * 1000.0,
            "dimensions": 1,
            "data": " ".join(fmt.format(v) for v in values),
        },
    }


def medication_statement(rid: str, subject: dict, drug: tuple, start: dt.date, cb: CodeBook) -> dict:
    return {
        **_resource("MedicationStatement", rid, "active"),
        "medicationCodeableConcept": cb.concept(drug),
        "subject": ref(subject),
        "effectivePeriod": {"start": iso(start)},
    }


def phenotype(rid: str, subject: dict, hpo: tuple[str, str], onset: dt.date, cb: CodeBook) -> dict:
    """A phenotypic feature as a problem-list Condition coded in HPO."""
    return condition(rid, subject, [(C.HPO, hpo[0], hpo[1])], onset, cb, category="problem-list-item")


def genomics_report(rid: str, subject: dict, spec: dict, results: list[dict], day: dt.date, panel: str,
                    cb: CodeBook) -> dict:
    """Genomics Reporting IG "Genomics Report": a DiagnosticReport (LOINC 81247-9) grouping the
    variant / ctDNA Observations of one specimen; an empty ``result`` means nothing reportable."""
    out = {
        **_resource("DiagnosticReport", rid, "final"),
        "category": [{"coding": [cb.coding("http://terminology.hl7.org/CodeSystem/v2-0074", "GE", "Genetics")]}],
        "code": {"coding": [cb.coding(fp.LOINC, "81247-9", "Master HL7 genetic variant reporting panel")], "text": panel},
        "subject": ref(subject),
        "effectiveDateTime": iso(day),
        "issued": iso(dt.datetime.combine(day, dt.time(16, 0))),
        "specimen": [ref(spec)],
    }
    if results:
        out["result"] = results
    else:
        out["conclusion"] = "No reportable variants detected."
    return out
