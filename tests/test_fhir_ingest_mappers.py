"""Each non-Observation mapper on a hand-written collection Bundle: the columns it must fill."""

from __future__ import annotations

import datetime as dt

import orjson
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node.ingest.engine import ingest_paths


def rid(resource_type: str, resource_id: str, *part) -> int:
    return stable_id("fhir", resource_type, resource_id, *part)


SUBJECT = {"reference": "Patient/p1"}
RESOURCES = [
    {"resourceType": "Organization", "id": "org1", "name": "North Hospital",
     "identifier": [{"system": "urn:org", "value": "N-1"}],
     "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "MA", "postalCode": "01101"}]},
    {"resourceType": "Location", "id": "loc1", "name": "Radiology wing", "position": {"latitude": 42.1, "longitude": -72.5},
     "address": {"city": "Springfield", "state": "Massachusetts"}},
    {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-07-08", "deceasedBoolean": True,
     "meta": {"lastUpdated": "2023-04-05T06:07:08Z"}, "managingOrganization": {"reference": "Organization?identifier=urn:org|N-1"},
     "address": [{"use": "old", "city": "Elsewhere"}, {"use": "home", "line": ["2 Elm St"], "city": "Springfield"}],
     "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                    "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                                         "code": "2054-5"}}]}]},
    {"resourceType": "Specimen", "id": "s1", "subject": SUBJECT, "accessionIdentifier": {"value": "ACC-9"},
     "type": {"coding": [{"system": "http://snomed.info/sct", "code": "119361006", "display": "Plasma specimen"}]},
     "collection": {"collectedDateTime": "2022-01-03", "quantity": {"value": 10, "unit": "mL",
                                                                     "system": "http://unitsofmeasure.org", "code": "mL"},
                    "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003"}]}}},
    {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": SUBJECT,
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86273004"}]},
     "performedPeriod": {"start": "2022-01-03T09:00:00+01:00", "end": "2022-01-03T10:30:00+01:00"}},
    {"resourceType": "Procedure", "id": "pr2", "status": "not-done", "subject": SUBJECT,
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86273004"}]}, "performedDateTime": "2022-01-04"},
    {"resourceType": "MedicationStatement", "id": "ms1", "status": "active", "subject": SUBJECT,
     "contained": [{"resourceType": "Medication", "id": "med", "code": {"coding": [
         {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1721560"}]}}],
     "medicationReference": {"reference": "#med"}, "effectivePeriod": {"start": "2022-02-01", "end": "2022-03-01"}},
    {"resourceType": "MedicationAdministration", "id": "ma1", "status": "completed", "subject": SUBJECT,
     "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1736854"}]},
     "effectiveDateTime": "2022-02-10T08:00:00Z",
     "dosage": {"text": "IV over 1 h", "dose": {"value": 50, "unit": "mg"},
                "route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]}}},
    {"resourceType": "Immunization", "id": "im1", "status": "completed", "patient": SUBJECT, "lotNumber": "L-77",
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
     "occurrenceDateTime": "2021-10-01"},
    {"resourceType": "Immunization", "id": "im2", "status": "not-done", "patient": SUBJECT,
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
     "occurrenceDateTime": "2021-10-02"},
    {"resourceType": "AllergyIntolerance", "id": "al1", "patient": SUBJECT, "criticality": "high",
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]}, "recordedDate": "2020-05-05"},
    {"resourceType": "Device", "id": "d-free", "status": "active"},
    {"resourceType": "Medication", "id": "m-alone", "code": {"coding": [{"code": "x"}]}},  # no mapper: counted
    {"resourceType": "Device", "id": "d1", "patient": SUBJECT, "serialNumber": "SN-1",
     "type": {"coding": [{"system": "https://radfed.org/fhir/CodeSystem/synth-device", "code": "wrist-wearable"}]}},
    {"resourceType": "Condition", "id": "c-staged", "subject": SUBJECT, "onsetDateTime": "2021-12-01",
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
     "stage": [{"summary": {"text": "IIIA"}}], "verificationStatus": {"coding": [{"code": "confirmed"}]}},
    {"resourceType": "Condition", "id": "c-error", "subject": SUBJECT, "onsetDateTime": "2021-12-01",
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
     "verificationStatus": {"coding": [{"code": "entered-in-error"}]}},
]


def one(conn, table: str, *columns: str):
    t = tables[table]
    return conn.execute(select(*(t.c[c] for c in columns))).one()


def test_every_mapper_fills_its_columns(sqlite_cdm, tmp_path):
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"resource": r} for r in reversed(RESOURCES)]}))
    summary = ingest_paths(sqlite_cdm, [path])
    assert summary.total("quarantined") == 0, summary.text()
    assert summary.skipped == {"Procedure: maps to no CDM row": 1, "Immunization: maps to no CDM row": 1,
                               "Device: maps to no CDM row": 1, "Condition: maps to no CDM row": 1,
                               "Medication: no mapper": 1}
    with sqlite_cdm.connect() as conn:
        assert one(conn, "care_site", "care_site_id", "care_site_name", "care_site_source_value") == (
            rid("Organization", "org1"), "North Hospital", "N-1")
        loc = tables["location"]
        places = {r.location_id: r for r in conn.execute(select(loc))}
        assert places[rid("Location", "loc1")].latitude == 42.1 and places[rid("Location", "loc1")].state is None
        assert places[rid("Organization", "org1", "location")].state == "MA"
        assert places[rid("Patient", "p1", "location")].address_1 == "2 Elm St"
        person = one(conn, "person", "gender_concept_id", "year_of_birth", "month_of_birth", "race_concept_id",
                     "location_id", "care_site_id", "person_source_value")
        assert person == (8507, 1950, 7, 8516, rid("Patient", "p1", "location"), rid("Organization", "org1"), "p1")
        assert one(conn, "death", "person_id", "death_date") == (rid("Patient", "p1"), dt.date(2023, 4, 5))
        specimen = one(conn, "specimen", "specimen_date", "quantity", "specimen_source_id", "specimen_source_value",
                       "anatomic_site_source_value", "unit_source_value")
        assert specimen == (dt.date(2022, 1, 3), 10, "ACC-9", "119361006", "368209003", "mL")
        assert one(conn, "procedure_occurrence", "procedure_datetime", "procedure_end_datetime") == (
            dt.datetime(2022, 1, 3, 9), dt.datetime(2022, 1, 3, 10, 30))
        drugs = tables["drug_exposure"]
        exposures = {r.drug_exposure_id: r for r in conn.execute(select(drugs))}
        statement = exposures[rid("MedicationStatement", "ms1")]
        assert (statement.drug_source_value, statement.drug_exposure_end_date) == ("1721560", dt.date(2022, 3, 1))
        given = exposures[rid("MedicationAdministration", "ma1")]
        assert (given.quantity, given.sig, given.route_source_value, given.drug_type_concept_id) == (
            50, "IV over 1 h", "47625008", 32818)
        vaccine = exposures[rid("Immunization", "im1")]
        assert (vaccine.lot_number, vaccine.drug_source_value, vaccine.drug_exposure_start_date) == (
            "L-77", "140", dt.date(2021, 10, 1))
        assert len(exposures) == 3
        assert one(conn, "observation", "observation_source_value", "observation_date", "qualifier_source_value") == (
            "91936005", dt.date(2020, 5, 5), "high")
        assert one(conn, "device_exposure", "device_exposure_id", "production_id", "device_source_value") == (
            rid("Device", "d1"), "SN-1", "wrist-wearable")
        condition = one(conn, "condition_occurrence", "condition_occurrence_id", "condition_status_concept_id",
                        "condition_concept_id")
        assert condition[:2] == (rid("Condition", "c-staged"), 32893)
        assert one(conn, "episode", "episode_id", "episode_concept_id", "episode_object_concept_id") == (
            rid("Condition", "c-staged", "episode"), 32533, condition[2])
