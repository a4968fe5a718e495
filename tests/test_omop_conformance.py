"""What radfed writes in its extensions is also written the way OHDSI tools read it (issue 20): an
imaging feature and a variant loaded through FHIR are MEASUREMENT rows with the MI-CDM and OMOP
Genomic links, a tumour stage and a grade are measurement modifiers linked to their condition —
through the real FHIR ingest, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node import fhir_profile as fp
from node.ingest.engine import ingest_paths

MEASUREMENT_TABLE, CONDITION_OCCURRENCE_ID_FIELD = 1147330, 1147127


def _coding(system, code, display=None):
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


def _entry(resource):
    return {"fullUrl": f"{resource['resourceType']}/{resource['id']}", "resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def _observation(rid, code, **extra):
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": code,
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01", **extra}


def _component(system, code, **value):
    return {"code": _coding(system, code), **value}


def _bundle(tmp_path):
    stage = _coding(fp.SNOMED, "1222806003", "American Joint Committee on Cancer stage IIIA")
    resources = [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-05-01",
         "identifier": [{"system": fp.DEFAULT_MRN_SYSTEM, "value": "MRN1"}]},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "code": _coding("http://snomed.info/sct", "254637007", "Non-small cell lung cancer"),
         "onsetDateTime": "2024-01-10", "stage": [{"summary": stage, "type": _coding(fp.SNOMED, "260998006", "Clinical")}]},
        _observation("grade", _coding(fp.LOINC, "59542-1", "Histologic grade"), focus=[{"reference": "Condition/c1"}],
                     valueCodeableConcept=_coding(fp.SNOMED, "1155708000", "Grade 2")),
        _observation("adc", _coding(fp.RADFED, "adc_mean"), category=[_coding(
            "http://terminology.hl7.org/CodeSystem/observation-category", "imaging")],
            valueQuantity={"value": 812.5, "unit": "um2/s", "system": fp.UCUM, "code": "um2/s"},
            component=[_component(fp.DICOM_DCM, fp.SERIES_INSTANCE_UID, valueString="1.2.3.4"),
                       _component(fp.DICOM_DCM, fp.FINDING, valueString="lesion-1")]),
        _observation("egfr", _coding(fp.LOINC, fp.VARIANT_ASSESSMENT), valueCodeableConcept=_coding(fp.LOINC, "LA9633-4"),
                     component=[_component(fp.LOINC, fp.GENE_STUDIED, valueCodeableConcept=_coding(fp.HGNC, "HGNC:3236", "EGFR")),
                                _component(fp.LOINC, fp.HGVS_C, valueCodeableConcept=_coding(
                                    "http://varnomen.hgvs.org", "NM_005228.5:c.2573T>G"))]),
    ]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [_entry(r) for r in resources]}))
    return path


def test_fhir_extensions_are_linked_measurement_rows(any_cdm, tmp_path):
    summary = ingest_paths(any_cdm, [_bundle(tmp_path)], workers=0)
    assert summary.total("quarantined") == 0, summary.as_dict()
    m, f, v = tables["measurement"], tables["image_feature"], tables["variant_occurrence"]
    condition_id = stable_id("fhir", "Condition", "c1")
    with any_cdm.connect() as conn:
        feature = conn.execute(select(f)).mappings().one()
        variant = conn.execute(select(v)).mappings().one()
        rows = {r.measurement_id: r for r in conn.execute(select(m)).mappings()}
    # MI-CDM: the feature's value is the measurement row its event link names
    assert feature.image_feature_event_field_concept_id == MEASUREMENT_TABLE
    linked = rows[feature.image_feature_event_id]
    assert (linked.person_id, linked.measurement_concept_id, linked.value_as_number) == (
        feature.person_id, feature.image_feature_concept_id, 812.5)
    assert linked.unit_concept_id == feature.unit_concept_id and linked.measurement_date.isoformat() == "2024-03-01"
    # OMOP Genomic: variant_occurrence.measurement_id names the variant's measurement
    assert variant.measurement_id in rows and rows[variant.measurement_id].person_id == variant.person_id
    assert rows[variant.measurement_id].measurement_source_value.startswith("EGFR")
    # Oncology: the stage (Condition.stage) and the grade (Observation.focus) modify the condition
    modifiers = [r for r in rows.values() if r.meas_event_field_concept_id == CONDITION_OCCURRENCE_ID_FIELD]
    assert {r.measurement_event_id for r in modifiers} == {condition_id}
    assert [r.measurement_source_value for r in modifiers] == ["1222806003"]
    assert not {r.measurement_event_id for r in rows.values()} - {condition_id, None}
    o = tables["observation"]  # a grade the vocabulary files under Observation links the same way
    with any_cdm.connect() as conn:
        grade = conn.execute(select(o).where(o.c.observation_source_value == "59542-1")).mappings().one()
    assert (grade.observation_event_id, grade.obs_event_field_concept_id) == (condition_id, CONDITION_OCCURRENCE_ID_FIELD)
    # re-running the same bundle writes nothing new (links and ids are deterministic)
    again = ingest_paths(any_cdm, [_bundle(tmp_path)], workers=0)
    assert again.total("unchanged") == summary.total("loaded")
    with any_cdm.connect() as conn:
        assert len(conn.execute(select(m.c.measurement_id)).all()) == len(rows)
