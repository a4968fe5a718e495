"""The FHIR ingest engine on real files: a real Synthea bulk export, Bundles, bad input, updates.

Everything runs against the real SQLite / PostgreSQL CDMs of ``conftest.py``; expected counts come
from the input files themselves (lines per file), never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from cdm.ids import stable_id
from cdm.schema import tables
from node.ingest.engine import ingest_paths
from node.ingest.load import records_of

SYNTHEA = "fhir/synthea-bulk-10"


def count(engine, table: str, *where) -> int:
    t = tables[table]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def snapshot(engine) -> dict:
    sr = tables["source_record"]
    with engine.connect() as conn:
        records = sorted(conn.execute(select(sr.c.source_key, sr.c.cdm_table, sr.c.cdm_id, sr.c.content_hash)).all())
    names = ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
             "observation", "device_exposure", "location", "care_site", "provider", "death", "observation_period")
    return {"records": records, **{n: count(engine, n) for n in names}}


def row_id(resource_type: str, resource_id: str, *part) -> int:
    return stable_id("fhir", resource_type, resource_id, *part)


def write_ndjson(path: Path, resources: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in resources))
    return path


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-03-04",
           "identifier": [{"system": "urn:radfed:mrn", "value": "MRN-1"}]}


def condition(cid: str, code: str = "254637007", system: str = "http://snomed.info/sct", patient: str = "p1",
              onset: str = "2020-01-02T10:00:00Z", **extra) -> dict:
    return {"resourceType": "Condition", "id": cid, "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "onsetDateTime": onset, **extra}


# -- the real Synthea export -------------------------------------------------------------------------


def analysed(engine) -> set[str]:
    """Tables with planner statistics from an explicit ANALYZE."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return set(conn.exec_driver_sql(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL").scalars())
        has_stats = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first()
        return set(conn.exec_driver_sql("SELECT DISTINCT tbl FROM sqlite_stat1").scalars()) if has_stats else set()


def test_synthea_bulk_export_loads_with_counts_from_the_files(any_cdm, shared_dir):
    folder = shared_dir / SYNTHEA
    by_type = {p.name.split(".")[0]: lines(p) for p in folder.glob("*.ndjson") if p.name != "log.ndjson"}
    grown = {"procedure_occurrence", "source_record"}  # >= 1,000 rows each from this export
    assert not analysed(any_cdm) & grown
    summary = ingest_paths(any_cdm, [folder])
    # the planner's statistics now describe the loaded tables, not the empty ones
    assert analysed(any_cdm) >= grown and "death" not in analysed(any_cdm)

    assert count(any_cdm, "quarantine") == 0, "the Synthea export is valid FHIR R4"
    assert count(any_cdm, "person") == len(by_type["Patient"])
    assert count(any_cdm, "condition_occurrence") == len(by_type["Condition"])
    assert count(any_cdm, "visit_occurrence") + count(any_cdm, "visit_detail") == len(by_type["Encounter"])
    assert count(any_cdm, "procedure_occurrence") == len(by_type["Procedure"])
    assert count(any_cdm, "drug_exposure") == len(by_type["MedicationRequest"]) + len(by_type["Immunization"])
    assert count(any_cdm, "observation") == len(by_type["AllergyIntolerance"])
    assert count(any_cdm, "device_exposure") == sum(1 for d in by_type["Device"] if d.get("patient"))
    assert count(any_cdm, "care_site") == len(by_type["Organization"])
    assert count(any_cdm, "provider") == len(by_type["Practitioner"])
    assert count(any_cdm, "death") == sum(1 for p in by_type["Patient"] if p.get("deceasedDateTime"))
    assert count(any_cdm, "observation_period") == len(by_type["Patient"])
    # every resource is accounted for: loaded or (PractitionerRole) skipped with its reason
    assert summary.total() == sum(len(v) for v in by_type.values())
    assert summary.total("loaded") == summary.total() - len(by_type["PractitionerRole"])
    assert summary.skipped == {"PractitionerRole: no CDM table": len(by_type["PractitionerRole"])}
    # Synthea's conditional references (Practitioner?identifier=...|NPI) resolve to the providers
    visit = tables["visit_occurrence"]
    assert count(any_cdm, "visit_occurrence", visit.c.provider_id.is_(None)) == 0
    assert count(any_cdm, "visit_occurrence", visit.c.care_site_id.is_(None)) == 0
    # a person's observation period spans their events
    first = by_type["Patient"][0]
    pid = row_id("Patient", first["id"])
    op = tables["observation_period"]
    with any_cdm.connect() as conn:
        start, end = conn.execute(select(op.c.observation_period_start_date, op.c.observation_period_end_date)
                                  .where(op.c.person_id == pid)).one()
    visit_days = [dt.date.fromisoformat(e["period"]["start"][:10]) for e in by_type["Encounter"]
                  if e["subject"]["reference"] == f"Patient/{first['id']}"]
    assert start <= min(visit_days) and end >= max(visit_days)

    before = snapshot(any_cdm)
    again = ingest_paths(any_cdm, [folder])
    assert snapshot(any_cdm) == before
    assert again.total("unchanged") == summary.total("loaded") and again.total("loaded") == 0


# -- updates -----------------------------------------------------------------------------------------


def test_an_edited_resource_replaces_its_rows(sqlite_cdm, tmp_path):
    src = tmp_path / "v1"
    src.mkdir()
    write_ndjson(src / "Patient.000.ndjson", [PATIENT])
    write_ndjson(src / "Condition.000.ndjson", [
        condition("c1", "8140/3", "http://terminology.hl7.org/CodeSystem/icd-o-3"), condition("c2")])
    ingest_paths(sqlite_cdm, [src])
    co, episode = tables["condition_occurrence"], tables["episode"]
    old_concept = count(sqlite_cdm, "concept", tables["concept"].c.concept_code == "8140/3")
    assert old_concept == 1
    assert count(sqlite_cdm, "episode") == 1 and count(sqlite_cdm, "episode_event") == 1

    edited = tmp_path / "v2"
    shutil.copytree(src, edited)
    write_ndjson(edited / "Condition.000.ndjson", [condition("c1", "363358000"), condition("c2")])
    summary = ingest_paths(sqlite_cdm, [edited])
    assert summary.by_type["Condition"]["updated"] == 1 and summary.by_type["Condition"]["unchanged"] == 1
    assert summary.by_type["Patient"]["unchanged"] == 1
    with sqlite_cdm.connect() as conn:
        rows = conn.execute(select(co.c.condition_occurrence_id, co.c.condition_source_value)
                            .order_by(co.c.condition_source_value)).all()
    assert sorted(rows) == sorted([(row_id("Condition", "c1"), "363358000"), (row_id("Condition", "c2"), "254637007")])
    assert count(sqlite_cdm, "episode") == 0 and count(sqlite_cdm, "episode_event") == 0, "no longer a tumour"
    with sqlite_cdm.connect() as conn:
        assert records_of(conn, "fhir|Condition|c1") == [("condition_occurrence", row_id("Condition", "c1"))]
    assert count(sqlite_cdm, "condition_occurrence", co.c.person_id == row_id("Patient", "p1")) == 2


def test_references_resolve_across_runs(any_cdm, tmp_path):
    first = write_ndjson(tmp_path / "Patient.000.ndjson", [PATIENT])
    practitioner = {"resourceType": "Practitioner", "id": "dr1",
                    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}]}
    write_ndjson(tmp_path / "Practitioner.000.ndjson", [practitioner])
    ingest_paths(any_cdm, [first, tmp_path / "Practitioner.000.ndjson"])
    later = tmp_path / "later"
    later.mkdir()
    write_ndjson(later / "Encounter.000.ndjson", [
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2021-05-01", "end": "2021-05-03"},
         "participant": [{"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999"}}]},
        {"resourceType": "Encounter", "id": "e2", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2021-05-02"}, "partOf": {"reference": "Encounter/e1"}},
    ])
    write_ndjson(later / "Condition.000.ndjson", [condition("c1", encounter={"reference": "Encounter/e2"})])
    summary = ingest_paths(any_cdm, [later])
    assert summary.total("quarantined") == 0
    visit, detail, co = tables["visit_occurrence"], tables["visit_detail"], tables["condition_occurrence"]
    with any_cdm.connect() as conn:
        assert conn.execute(select(visit.c.visit_concept_id, visit.c.provider_id)).one() == (9201, row_id("Practitioner", "dr1"))
        assert conn.execute(select(detail.c.visit_detail_id, detail.c.visit_occurrence_id)).one() == (
            row_id("Encounter", "e2"), row_id("Encounter", "e1"))
        # an event in the sub-encounter belongs to the parent visit
        assert conn.execute(select(co.c.visit_occurrence_id)).scalar_one() == row_id("Encounter", "e1")
        op = tables["observation_period"]
        assert conn.execute(select(op.c.observation_period_start_date, op.c.observation_period_end_date)).one() == (
            dt.date(2020, 1, 2), dt.date(2021, 5, 3))


# -- Bundles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle_type", ["transaction", "collection", "searchset"])
def test_bundle_with_urn_uuid_references(sqlite_cdm, tmp_path, bundle_type):
    patient_url, encounter_url = "urn:uuid:5b1f0000-0000-4000-8000-000000000001", "urn:uuid:5b1f0000-0000-4000-8000-000000000002"
    patient = {k: v for k, v in PATIENT.items() if k != "id"}  # a POSTed resource: its id is the fullUrl's uuid
    entries = [  # deliberately out of dependency order
        {"fullUrl": "urn:uuid:5b1f0000-0000-4000-8000-000000000003",
         "resource": condition("c9", patient="x") | {"subject": {"reference": patient_url},
                                                      "encounter": {"reference": encounter_url}}},
        {"fullUrl": encounter_url, "resource": {"resourceType": "Encounter", "id": "e9", "status": "finished",
                                                "class": {"code": "EMER"}, "subject": {"reference": patient_url},
                                                "period": {"start": "2020-01-02T08:00:00+01:00"}}},
        {"fullUrl": patient_url, "resource": patient},
    ]
    if bundle_type == "transaction":
        for entry in entries:
            entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries}))
    summary = ingest_paths(sqlite_cdm, [path])
    assert summary.total("loaded") == 3 and summary.total("quarantined") == 0
    person_id = row_id("Patient", patient_url.removeprefix("urn:uuid:"))
    co, visit = tables["condition_occurrence"], tables["visit_occurrence"]
    with sqlite_cdm.connect() as conn:
        assert conn.execute(select(co.c.person_id, co.c.visit_occurrence_id)).one() == (person_id, row_id("Encounter", "e9"))
        assert conn.execute(select(visit.c.visit_concept_id, visit.c.visit_start_datetime)).one() == (
            9203, dt.datetime(2020, 1, 2, 8, 0))  # the local wall time is kept


def test_unsupported_bundle_type_is_quarantined(sqlite_cdm, tmp_path):
    path = tmp_path / "doc.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "document", "entry": [{"resource": PATIENT}]}))
    summary = ingest_paths(sqlite_cdm, [path])
    assert summary.quarantined == {"UNSUPPORTED_BUNDLE": 1}
    q = tables["quarantine"]
    with sqlite_cdm.connect() as conn:
        row = conn.execute(select(q.c.source_file, q.c.reason, q.c.payload)).one()
    assert row.source_file == str(path) and "document" in row.reason and row.payload == path.read_bytes()


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_lines_are_quarantined_with_file_line_and_reason(any_cdm, tmp_path):
    write_ndjson(tmp_path / "Patient.000.ndjson", [PATIENT, {**PATIENT, "resourceType": "Patiant", "id": "p2"}])
    good = condition("ok")
    truncated = orjson.dumps(condition("cut"))[:40]
    invalid = condition("bad-type", onset="yesterday")
    no_patient = condition("orphan", patient="nobody")
    no_id = {k: v for k, v in condition("x").items() if k != "id"}
    conditions = write_ndjson(tmp_path / "Condition.000.ndjson",
                              [good, truncated, invalid, no_patient, no_id, {"resourceType": ["x"]}, b"[1, 2]"])
    summary = ingest_paths(any_cdm, [tmp_path])

    assert summary.total("loaded") == 2  # p1 and the good condition: the run went on past every bad line
    q = tables["quarantine"]
    with any_cdm.connect() as conn:
        found = {(Path(r.source_file).name, r.source_line): (r.reason_code, r.resource_type, r.resource_id, r.reason, r.payload)
                 for r in conn.execute(select(q))}
    assert {k: v[0] for k, v in found.items()} == {
        ("Patient.000.ndjson", 2): "UNKNOWN_RESOURCE_TYPE",
        ("Condition.000.ndjson", 2): "NOT_JSON",
        ("Condition.000.ndjson", 3): "INVALID_RESOURCE",
        ("Condition.000.ndjson", 4): "UNKNOWN_PATIENT",
        ("Condition.000.ndjson", 5): "MISSING_ID",
        ("Condition.000.ndjson", 6): "NOT_A_RESOURCE",
        ("Condition.000.ndjson", 7): "NOT_A_RESOURCE",
    }
    assert found[("Condition.000.ndjson", 2)][4] == truncated + b"\n", "the bytes are kept"
    assert found[("Condition.000.ndjson", 2)][1] == "Condition", "the file's type names a line that cannot"
    assert "onsetDateTime" in found[("Condition.000.ndjson", 3)][3]
    assert "Patient/nobody" in found[("Condition.000.ndjson", 4)][3]
    assert found[("Condition.000.ndjson", 4)][2] == "orphan"
    assert all(str(conditions) in v[3] or v[0] != "Condition" for v in found.values())
    assert summary.quarantined == Counter({"UNKNOWN_RESOURCE_TYPE": 1, "NOT_JSON": 1, "INVALID_RESOURCE": 1,
                                           "UNKNOWN_PATIENT": 1, "MISSING_ID": 1, "NOT_A_RESOURCE": 2})
    # a second run quarantines the same input again, without duplicating it
    ingest_paths(any_cdm, [tmp_path])
    assert count(any_cdm, "quarantine") == 7


def test_gzip_ndjson_and_a_damaged_gzip_stream(sqlite_cdm, tmp_path):
    patients = [{**PATIENT, "id": f"p{i}"} for i in range(300)]
    data = b"".join(orjson.dumps(p) + b"\n" for p in patients)
    with gzip.open(tmp_path / "Patient.000.ndjson.gz", "wb") as f:
        f.write(data)
    summary = ingest_paths(sqlite_cdm, [tmp_path / "Patient.000.ndjson.gz"])
    assert summary.total("loaded") == 300 and count(sqlite_cdm, "person") == 300

    whole = gzip.compress(data.replace(b'"p', b'"q'))
    cut = tmp_path / "cut" / "Patient.000.ndjson.gz"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    summary = ingest_paths(sqlite_cdm, [cut.parent])
    assert summary.quarantined["NOT_JSON"] >= 1
    assert 0 < summary.total("loaded") < 300
    assert count(sqlite_cdm, "person") == 300 + summary.total("loaded")


def test_missing_path_writes_nothing(sqlite_cdm, tmp_path):
    write_ndjson(tmp_path / "Patient.000.ndjson", [PATIENT])
    with pytest.raises(FileNotFoundError):
        ingest_paths(sqlite_cdm, [tmp_path / "Patient.000.ndjson", tmp_path / "nope"])
    assert count(sqlite_cdm, "person") == 0
