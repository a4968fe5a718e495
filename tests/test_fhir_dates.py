"""One date rule for every FHIR resource (issue 19.1): the local clock time as written, offset dropped.

A Bundle re-offset to +05:00 once put every Observation a day before its own visit (Observations
were converted to UTC, Encounters kept their local time).  Here the same events are written with
every UTC offset from -12:00 to +14:00, late in the evening and just after midnight, and every
resource type's date and datetime columns must show the day and clock time as written; a cohort
window of day 0 around the visit must find the same-day Observation for every patient.
"""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node.execute import run_request
from node.ingest.engine import ingest_paths
from node.ingest.mappers.values import parse_datetime

SNOMED, LOINC = "http://snomed.info/sct", "http://loinc.org"
#: every offset in use somewhere, from Baker Island (-12:00) to Kiribati (+14:00)
OFFSETS = ["-12:00", "-11:00", "-10:00", "-09:30", "-09:00", "-08:00", "-07:00", "-06:00", "-05:00", "-04:00",
           "-03:30", "-03:00", "-02:00", "-01:00", "Z", "+01:00", "+02:00", "+03:00", "+03:30", "+04:00",
           "+04:30", "+05:00", "+05:30", "+05:45", "+06:00", "+06:30", "+07:00", "+08:00", "+08:45", "+09:00",
           "+09:30", "+10:00", "+10:30", "+11:00", "+12:00", "+12:45", "+13:00", "+14:00"]
DAY = dt.date(2023, 12, 31)  # the last day of a year: a shift of one day changes year, month and day
CLOCKS = {"late": dt.time(23, 45, 10), "early": dt.time(0, 5, 0)}


def _cc(system, code):
    return {"coding": [{"system": system, "code": code}]}


def _resources(tag: str, stamp: str, n: int) -> list[dict]:
    """One patient's events, every one of them at ``stamp`` (a dateTime with its offset)."""
    pid, subject = f"p-{tag}", {"reference": f"Patient/p-{tag}"}
    encounter = {"reference": f"Encounter/e-{tag}"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1960-01-01"},
        {"resourceType": "Encounter", "id": f"e-{tag}", "status": "finished", "subject": subject,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "period": {"start": stamp, "end": stamp}},
        {"resourceType": "Observation", "id": f"o-{tag}", "status": "final", "subject": subject, "encounter": encounter,
         "code": _cc(LOINC, "2160-0"), "effectiveDateTime": stamp,
         "valueQuantity": {"value": 1.1, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}},
        {"resourceType": "Observation", "id": f"w-{tag}", "status": "final", "subject": subject,
         "code": _cc(LOINC, "8867-4"), "effectivePeriod": {"start": stamp},
         "valueSampledData": {"origin": {"value": 0}, "period": 1000, "dimensions": 1, "data": "60 61 62"}},
        {"resourceType": "Condition", "id": f"c-{tag}", "subject": subject, "code": _cc(SNOMED, "254637007"),
         "onsetDateTime": stamp},
        {"resourceType": "Procedure", "id": f"pr-{tag}", "status": "completed", "subject": subject,
         "code": _cc(SNOMED, "86273004"), "performedDateTime": stamp},
        {"resourceType": "MedicationAdministration", "id": f"ma-{tag}", "status": "completed", "subject": subject,
         "medicationCodeableConcept": _cc("http://www.nlm.nih.gov/research/umls/rxnorm", "1049221"),
         "effectiveDateTime": stamp},
        {"resourceType": "Immunization", "id": f"im-{tag}", "status": "completed", "patient": subject,
         "vaccineCode": _cc("http://hl7.org/fhir/sid/cvx", "140"), "occurrenceDateTime": stamp},
        {"resourceType": "AllergyIntolerance", "id": f"al-{tag}", "patient": subject, "code": _cc(SNOMED, "91936005"),
         "onsetDateTime": stamp},
        {"resourceType": "Specimen", "id": f"sp-{tag}", "subject": subject, "type": _cc(SNOMED, "119361006"),
         "collection": {"collectedDateTime": stamp}},
        {"resourceType": "ImagingStudy", "id": f"is-{tag}", "status": "available", "subject": subject,
         "started": stamp, "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.3.{n}"}],
         "series": [{"uid": f"1.2.3.{n}.1", "modality": {"code": "MR"}}]},
        {"resourceType": "DiagnosticReport", "id": f"dr-{tag}", "status": "final", "subject": subject,
         "code": _cc(LOINC, "18748-4"), "effectiveDateTime": stamp, "conclusionCode": [_cc(SNOMED, "363346000")]},
        {"resourceType": "DocumentReference", "id": f"doc-{tag}", "status": "current", "subject": subject,
         "type": _cc(LOINC, "11506-3"), "context": {"period": {"start": stamp}},
         "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}]},
    ]


#: (table, date column, datetime column) of every row the resources above write
DATED = [("visit_occurrence", "visit_start_date", "visit_start_datetime"),
         ("measurement", "measurement_date", "measurement_datetime"),
         ("condition_occurrence", "condition_start_date", "condition_start_datetime"),
         ("procedure_occurrence", "procedure_date", "procedure_datetime"),
         ("drug_exposure", "drug_exposure_start_date", "drug_exposure_start_datetime"),
         ("observation", "observation_date", "observation_datetime"),
         ("specimen", "specimen_date", "specimen_datetime"),
         ("image_occurrence", "image_occurrence_date", "image_occurrence_datetime"),
         ("note", "note_date", "note_datetime"),
         ("signal_window", None, "window_start_datetime")]


def test_the_rule_on_single_values():
    assert parse_datetime("2023-12-31T23:45:10-12:00") == (DAY, dt.datetime(2023, 12, 31, 23, 45, 10))
    assert parse_datetime("2023-12-31T23:45:10.1234567+14:00")[1] == dt.datetime(2023, 12, 31, 23, 45, 10, 123456)
    assert parse_datetime("2023-12") == (dt.date(2023, 12, 1), None)
    assert parse_datetime("2023") == (dt.date(2023, 1, 1), None)
    assert parse_datetime(None) is None
    for bad in ("2023-13-01", "2023-02-30T10:00:00Z", "31/12/2023", "2023-12-31T25:00:00Z"):
        with pytest.raises(Exception, match="BAD_DATE"):
            parse_datetime(bad)


def test_every_resource_keeps_the_local_day_and_time_for_every_offset(any_cdm, tmp_path):
    expected = {}
    entries = []
    for offset in OFFSETS:
        for name, clock in CLOCKS.items():
            tag = f"{name}{offset.replace(':', '').replace('+', 'p').replace('-', 'm')}"
            stamp = f"{DAY.isoformat()}T{clock.isoformat()}{offset}"
            expected[stable_id("fhir", "Patient", f"p-{tag}")] = dt.datetime.combine(DAY, clock)
            entries += [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in _resources(tag, stamp, len(expected))]
    (tmp_path / "offsets.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                                          "entry": entries}))
    summary = ingest_paths(any_cdm, [tmp_path], workers=0)
    assert summary.total("quarantined") == 0, summary.quarantined
    assert summary.total("loaded") == len(entries)

    with any_cdm.connect() as conn:
        for table, date_column, time_column in DATED:
            t = tables[table]
            rows = conn.execute(select(t.c.person_id, t.c[time_column],
                                       *([t.c[date_column]] if date_column else []))).all()
            persons = {r[0] for r in rows}
            assert persons == set(expected), f"{table}: a row per patient"
            for person_id, moment, *day in rows:
                if table == "signal_window":  # the first 60-second window starts at the first sample
                    assert moment == expected[person_id], (table, moment)
                    continue
                assert day == [DAY] and moment == expected[person_id], (table, person_id, day, moment)

    # the same-day Observation is on day 0 of the visit, whatever the offset (the issue's +05:00 case)
    response = run_request(any_cdm, None, {"spec": {
        "cohort": {"index": {"kind": "visit", "codes": ["Visit:OP"]},
                   "inclusion": [{"kind": "measurement", "code": "LOINC:2160-0", "window": {"start": 0, "end": 0}}]},
        "analysis": {"type": "count"}}})
    assert response["status"] == "ok" and response["result"]["n"] == len(expected)
