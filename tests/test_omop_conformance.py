"""What radfed writes in its extensions is also written the way OHDSI tools read it (issue 20): an
imaging feature and a variant loaded through FHIR are MEASUREMENT rows with the MI-CDM and OMOP
Genomic links, a tumour stage and a grade are measurement modifiers linked to their condition —
through the real FHIR ingest, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
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


def _status(rid, code, day):
    return _observation(rid, _coding(fp.LOINC, fp.CANCER_DISEASE_STATUS), effectiveDateTime=day,
                        focus=[{"reference": "Condition/c1"}], valueCodeableConcept=_coding(fp.SNOMED, code))


def test_disease_dynamics_use_the_episode_vocabulary_and_radfed_names_still_find_them(any_cdm, tmp_path):
    """Disease-status assessments become Disease Dynamic episodes with the Episode vocabulary's concepts
    (Progression 32949, Stable Disease 32948, Complete / Partial Remission 32946 / 32947); a spec naming
    ``RADFED:progression`` counts them, and still counts a row coded the way radfed wrote it before."""
    from sqlalchemy import insert

    from cdm.compiler import Resolver
    from node.ingest.mappers.values import RADFED_IDS

    bundle = json.loads(_bundle(tmp_path).read_text())
    statuses = [_status("s1", fp.DISEASE_WORSENED, "2024-04-01"), _status("s2", fp.DISEASE_STABLE, "2024-05-01"),
                _status("s3", fp.DISEASE_FULL_REMISSION, "2024-06-01"),
                _status("s4", fp.DISEASE_PARTIAL_REMISSION, "2024-07-01"), _status("s5", fp.DISEASE_IMPROVED, "2024-08-01")]
    bundle["entry"] += [_entry(r) for r in statuses]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    summary = ingest_paths(any_cdm, [tmp_path / "bundle.json"], workers=0)
    assert summary.total("quarantined") == 0, summary.as_dict()
    e = tables["episode"]
    with any_cdm.connect() as conn:
        coded = dict(conn.execute(select(e.c.episode_source_value, e.c.episode_concept_id)
                                  .where(e.c.episode_concept_id != 32533)).all())
    assert coded == {fp.DISEASE_WORSENED: 32949, fp.DISEASE_STABLE: 32948, fp.DISEASE_FULL_REMISSION: 32946,
                     fp.DISEASE_PARTIAL_REMISSION: 32947, fp.DISEASE_IMPROVED: RADFED_IDS["response"]}

    def matched(code):  # the episode rows an episode criterion naming ``code`` selects (compiler's resolver)
        ids = Resolver(any_cdm).ids([code])
        with any_cdm.connect() as conn:
            return sorted(conn.execute(select(e.c.episode_source_value).where(e.c.episode_concept_id.in_(ids))).scalars())

    assert matched("RADFED:progression") == [fp.DISEASE_WORSENED]
    assert matched("RADFED:stable_disease") == [fp.DISEASE_STABLE]
    assert matched("RADFED:response") == sorted([fp.DISEASE_FULL_REMISSION, fp.DISEASE_PARTIAL_REMISSION, fp.DISEASE_IMPROVED])
    # a row written before the switch (RADFED's own concept) is found by the same name
    with any_cdm.begin() as conn:
        person_id = conn.execute(select(tables["person"].c.person_id)).scalar_one()
        conn.execute(insert(e).values(episode_id=99, person_id=person_id, episode_concept_id=RADFED_IDS["progression"],
                                      episode_start_date=dt.date(2024, 9, 1), episode_type_concept_id=32817,
                                      episode_object_concept_id=0, episode_source_value="old"))
    assert matched("RADFED:progression") == sorted([fp.DISEASE_WORSENED, "old"])


def _imaging_study(rid, study_uid, series_uid, procedure=None):
    return {"resourceType": "ImagingStudy", "id": rid, "status": "available", "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}], "started": "2024-02-01T09:30:00+01:00",
            **({"procedureReference": {"reference": procedure}} if procedure else {}),
            "series": [{"uid": uid, "modality": {"system": fp.DICOM_DCM, "code": modality}, "numberOfInstances": 1}
                       for uid, modality in ((series_uid, "CT"), (series_uid + ".9", "SEG"))]}


def test_every_imaging_series_names_a_procedure_from_fhir(any_cdm, tmp_path):
    """MI-CDM makes image_occurrence.procedure_occurrence_id NOT NULL: a study whose ImagingStudy names
    no procedure becomes one PROCEDURE_OCCURRENCE (deterministic id, the modality as its concept), a study
    that names one links it; re-running writes nothing new."""
    from cdm.conformance import imaging_procedure_id

    bundle = json.loads(_bundle(tmp_path).read_text())
    procedure = {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
                 "code": _coding(fp.SNOMED, "241540006", "MRI of brain"), "performedDateTime": "2024-02-02"}
    bundle["entry"] += [_entry(r) for r in (_imaging_study("is1", "1.2.840.1", "1.2.840.1.1"), procedure,
                                            _imaging_study("is2", "1.2.840.2", "1.2.840.2.1", "Procedure/pr1"))]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    summary = ingest_paths(any_cdm, [tmp_path / "bundle.json"], workers=0)
    assert summary.total("quarantined") == 0, summary.as_dict()
    io, po = tables["image_occurrence"], tables["procedure_occurrence"]
    with any_cdm.connect() as conn:
        links = dict(conn.execute(select(io.c.image_series_uid, io.c.procedure_occurrence_id)).all())
        procedures = {r.procedure_occurrence_id: r for r in conn.execute(select(po)).mappings()}
        ct_modality = conn.execute(select(io.c.modality_concept_id).where(io.c.image_series_uid == "1.2.840.1.1")).scalar_one()
    study_procedure = imaging_procedure_id("1.2.840.1")
    assert links == {"1.2.840.1.1": study_procedure, "1.2.840.1.1.9": study_procedure,
                     "1.2.840.2.1": stable_id("fhir", "Procedure", "pr1"), "1.2.840.2.1.9": stable_id("fhir", "Procedure", "pr1")}
    imaging = procedures[study_procedure]
    assert (imaging.procedure_concept_id, imaging.procedure_source_value, imaging.procedure_type_concept_id) == (ct_modality, "CT", 32817)
    assert imaging.procedure_date.isoformat() == "2024-02-01" and imaging.procedure_source_concept_id is None
    assert len(procedures) == 2  # the study's own procedure and pr1: no imaging procedure where one is named
    again = ingest_paths(any_cdm, [tmp_path / "bundle.json"], workers=0)
    assert again.total("unchanged") == summary.total("loaded")
    with any_cdm.connect() as conn:
        assert len(conn.execute(select(po.c.procedure_occurrence_id)).all()) == 2


def test_every_imaging_series_names_a_procedure_from_dicom(any_cdm, tmp_path):
    """The DICOM ingest gives a study the same PROCEDURE_OCCURRENCE (one per StudyInstanceUID, whatever the
    number of series: the id an ImagingStudy of that study gives it too); re-indexing writes nothing new."""
    from test_dicom_fixtures import add_person, make_study

    from cdm.conformance import imaging_procedure_id
    from node.dicom.index import index_paths

    study = make_study(tmp_path / "in")
    person = add_person(any_cdm, "MRN001")
    index_paths(any_cdm, [tmp_path / "in"])
    io, po = tables["image_occurrence"], tables["procedure_occurrence"]

    def state():
        with any_cdm.connect() as conn:
            return (sorted(conn.execute(select(io.c.image_series_uid, io.c.procedure_occurrence_id)).all()),
                    [dict(r) for r in conn.execute(select(po)).mappings()])

    links, procedures = state()
    assert len(links) == 4 and {p for _s, p in links} == {imaging_procedure_id(study["study"])}
    [procedure] = procedures
    assert procedure["person_id"] == person and procedure["procedure_date"].isoformat() == "2026-03-01"
    assert procedure["procedure_source_value"] in {"CT", "MR", "PT", "SEG"} and procedure["procedure_concept_id"] > 0
    index_paths(any_cdm, [tmp_path / "in"])
    assert state() == (links, procedures)


def test_a_variant_names_its_sequencing_procedure_and_specimen(any_cdm, tmp_path):
    """G-CDM's variant_occurrence.procedure_occurrence_id and specimen_id: the Procedure the variant
    Observation is ``partOf`` and its ``specimen``."""
    bundle = json.loads(_bundle(tmp_path).read_text())
    sequencing = {"resourceType": "Procedure", "id": "seq1", "status": "completed", "subject": {"reference": "Patient/p1"},
                  "code": _coding(fp.SNOMED, "117040002", "Nucleic acid sequencing"), "performedDateTime": "2024-02-20"}
    tissue = {"resourceType": "Specimen", "id": "tissue1", "subject": {"reference": "Patient/p1"},
              "type": _coding(fp.SNOMED, "119376003", "Tissue specimen"), "collection": {"collectedDateTime": "2024-02-15"}}
    variant = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "egfr")
    variant["partOf"] = [{"reference": "Procedure/seq1"}]
    variant["specimen"] = {"reference": "Specimen/tissue1"}
    bundle["entry"] += [_entry(sequencing), _entry(tissue)]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    summary = ingest_paths(any_cdm, [tmp_path / "bundle.json"], workers=0)
    assert summary.total("quarantined") == 0, summary.as_dict()
    v = tables["variant_occurrence"]
    with any_cdm.connect() as conn:
        links = conn.execute(select(v.c.procedure_occurrence_id, v.c.specimen_id)).one()
    assert tuple(links) == (stable_id("fhir", "Procedure", "seq1"), stable_id("fhir", "Specimen", "tissue1"))


def test_the_site_dry_run_counts_the_standard_dynamics_rows_a_radfed_name_matches(sqlite_cdm, tmp_path):
    """``vocab resolve`` / the dry run say what a spec's code finds here: RADFED:progression finds the
    Progression (32949) episodes the ingest writes, so it must not say "0 rows"."""
    from cdm.vocabulary import Vocabulary

    bundle = json.loads(_bundle(tmp_path).read_text())
    bundle["entry"].append(_entry(_status("s1", fp.DISEASE_WORSENED, "2024-04-01")))
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    assert ingest_paths(sqlite_cdm, [tmp_path / "bundle.json"], workers=0).total("quarantined") == 0
    concept_id, found = Vocabulary(sqlite_cdm).describe("RADFED:progression")
    assert concept_id == 2000000400 and found == "1 in episode"
