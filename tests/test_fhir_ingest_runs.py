"""How FHIR ingest runs behave as a whole: the validation pool, load order across files, retries,
truncated files, progress, quarantine after a fix, and ``--force`` after a vocabulary load.

Real SQLite / PostgreSQL CDMs (``conftest.py``), real worker processes, real files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import orjson
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from cdm.db import create_cdm, open_engine
from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import vocabulary_for_uri
from node.cli import main
from node.ingest.engine import ingest_paths
from node.synth import SynthOptions, generate

#: Columns that record when something was written, not what: they differ between two loads.
WALL_CLOCK = {"loaded_at", "quarantined_at"}
NPI = "http://hl7.org/fhir/sid/us-npi"
SYNTHEA_ORG = "https://github.com/synthetichealth/synthea"


def rid(resource_type: str, resource_id: str, *part) -> int:
    return stable_id("fhir", resource_type, resource_id, *part)


def count(engine, table: str, *where) -> int:
    t = tables[table]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()


def write_ndjson(path: Path, resources: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in resources))
    return path


def write_bundle(path: Path, resources: list[dict], bundle_type: str = "collection") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": bundle_type,
                                   "entry": [{"resource": r} for r in resources]}))
    return path


def patient(pid: str, **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-03-04", **extra}


def condition(cid: str, patient_id: str = "p1", code: str = "254637007", onset: str = "2020-01-02", **extra) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}, "onsetDateTime": onset, **extra}


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of every table, ordered, without the wall-clock columns."""
    out = {}
    with engine.connect() as conn:
        for name, table in sorted(tables.items()):
            if name == "metadata":  # when the CDM was created
                continue
            columns = [c for c in table.columns if c.name not in WALL_CLOCK]
            out[name] = sorted(conn.execute(select(*columns)).all(), key=repr)
    return out


def outcome(summary) -> dict:
    return {k: v for k, v in summary.as_dict().items() if k != "seconds"}


# -- the validation pool -------------------------------------------------------------------------------


def export_with_duplicates(tmp_path: Path) -> tuple[Path, dict]:
    """A 25-patient synthetic export (with its planted bad records) and one of its Conditions, sent
    again in a second file of its type, edited, then as before, then edited again: with batches of 37,
    the first two copies fall in different batches (the second batch's hashes are read before the
    first is written) and the last two in one batch."""
    generate(tmp_path / "synth", SynthOptions(sites=1, patients=25, seed=4, dicom=False))
    export = tmp_path / "synth" / "site-1" / "fhir"
    conditions = [orjson.loads(line) for line in (export / "Condition.000.ndjson").read_bytes().splitlines()
                  if line.strip().endswith(b"}") and b"no-such" not in line]
    first = next(c for c in conditions if c.get("onsetDateTime"))
    edited = {**first, "onsetDateTime": "2001-02-03"}
    fillers = [condition(f"filler{i}", first["subject"]["reference"][8:]) for i in range(40)]
    write_ndjson(export / "Condition.001.ndjson", [edited, *fillers, first, edited])
    return export, first


def test_worker_pool_loads_exactly_what_in_process_validation_loads(tmp_path):
    export, first = export_with_duplicates(tmp_path)
    results = {}
    # in-process; 2 workers; and a run that remembers only 3 batches' worth of resources per cache
    # generation, so most references are resolved through the CDM (what a run over millions does)
    for name, workers, cache_size in (("in-process", 0, 100_000), ("pool", 2, 100_000), ("forgetful", 0, 1)):
        engine = open_engine(tmp_path / f"cdm-{name}.sqlite")
        create_cdm(engine, source_name="test-site")
        summary = ingest_paths(engine, [export], batch_size=37, workers=workers, cache_size=cache_size)
        results[name] = (outcome(summary), dump(engine))
        engine.dispose()

    assert results["in-process"][0] == results["pool"][0] == results["forgetful"][0]
    assert results["in-process"][1] == results["pool"][1], "the same rows, ids, concepts and quarantine"
    assert results["in-process"][1] == results["forgetful"][1]
    summary, rows = results["pool"]
    assert summary["quarantined"] == len([r for r in rows["quarantine"]]) > 0, "the planted bad records"
    # edited (vs the first file), as before (vs the edit the batch before wrote), edited (vs the copy
    # just before it in its batch): three updates, none taken for unchanged
    assert (summary["by_type"]["Condition"]["updated"], summary["by_type"]["Condition"]["unchanged"]) == (3, 0)
    co = tables["condition_occurrence"]
    column = [c.name for c in co.columns if c.name not in WALL_CLOCK]
    row = next(r for r in rows["condition_occurrence"]
               if r[column.index("condition_occurrence_id")] == rid("Condition", first["id"]))
    assert row[column.index("condition_start_date")] == dt.date(2001, 2, 3), "the copy read last wins"


# -- load order across files, and retries at the end of a run ------------------------------------------


def test_references_resolve_across_bundle_and_ndjson_files_in_one_run(any_cdm, tmp_path):
    folder = tmp_path / "in"
    # Synthea's bundle export: per-patient Bundles whose names sort before the hospital and practitioner
    # Bundles they reference through conditional references.
    write_bundle(folder / "Aaron697_Smith.json", [
        patient("p1"),
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2021-05-01T10:00:00Z"},
         "serviceProvider": {"reference": f"Organization?identifier={SYNTHEA_ORG}|org-7"},
         "participant": [{"individual": {"reference": f"Practitioner?identifier={NPI}|4242"}}]},
    ], "transaction")
    write_bundle(folder / "hospitalInformation1.json", [
        {"resourceType": "Organization", "id": "o7", "name": "General",
         "identifier": [{"system": SYNTHEA_ORG, "value": "org-7"}]}], "batch")
    write_bundle(folder / "practitionerInformation1.json", [
        {"resourceType": "Practitioner", "id": "dr", "identifier": [{"system": NPI, "value": "4242"}]}], "batch")
    # NDJSON patients and a Bundle of their conditions; the Bundle's name sorts first.
    write_ndjson(folder / "Patient.000.ndjson", [patient("p2")])
    write_bundle(folder / "a-conditions.json", [condition("c2", "p2")])
    # Two patient Bundles of equal rank: the first holds a condition of the second's patient.
    write_bundle(folder / "b-first.json", [patient("p3"), condition("c4", "p4")])
    write_bundle(folder / "c-second.json", [patient("p4")])
    summary = ingest_paths(any_cdm, [folder])

    assert summary.total("quarantined") == 0, summary.text()
    assert count(any_cdm, "person") == 4 and count(any_cdm, "condition_occurrence") == 2
    visit, co = tables["visit_occurrence"], tables["condition_occurrence"]
    with any_cdm.connect() as conn:
        assert conn.execute(select(visit.c.care_site_id, visit.c.provider_id)).one() == (
            rid("Organization", "o7"), rid("Practitioner", "dr"))
        assert dict(conn.execute(select(co.c.condition_occurrence_id, co.c.person_id)).all()) == {
            rid("Condition", "c2"): rid("Patient", "p2"), rid("Condition", "c4"): rid("Patient", "p4")}


# -- truncated files -----------------------------------------------------------------------------------


def test_truncated_bundle_and_ndjson_files_are_quarantined_and_the_run_goes_on(any_cdm, tmp_path):
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient("p1"), patient("p2")])
    whole = write_bundle(folder / "bundle.json", [condition("b1"), condition("b2")]).read_bytes()
    (folder / "bundle.json").write_bytes(whole[: len(whole) // 2])
    last = orjson.dumps(condition("c3"))
    (folder / "Condition.000.ndjson").write_bytes(orjson.dumps(condition("c1")) + b"\n" + orjson.dumps(condition("c2"))
                                                  + b"\n" + last[: len(last) - 9])  # no newline: the copy stopped
    summary = ingest_paths(any_cdm, [folder])

    assert summary.total("loaded") == 4 and summary.quarantined == {"NOT_JSON": 2}
    q = tables["quarantine"]
    with any_cdm.connect() as conn:
        found = {Path(r.source_file).name: r for r in conn.execute(select(q))}
    assert set(found) == {"bundle.json", "Condition.000.ndjson"}
    assert found["bundle.json"].payload == whole[: len(whole) // 2] and "not JSON" in found["bundle.json"].reason
    cut = found["Condition.000.ndjson"]
    assert (cut.source_line, cut.resource_type, cut.payload) == (3, "Condition", last[: len(last) - 9])
    assert f"{folder / 'Condition.000.ndjson'}:3" in cut.reason


# -- progress ------------------------------------------------------------------------------------------


def test_progress_reports_bytes_read_up_to_the_total(sqlite_cdm, tmp_path):
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(2500)])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", f"p{i}") for i in range(2500)])
    write_bundle(folder / "one.json", [patient("solo")])
    (folder / "log.ndjson").write_bytes(b'{"eventId": "kickoff"}\n')
    total = sum(p.stat().st_size for p in folder.iterdir())
    calls = []
    ingest_paths(sqlite_cdm, [folder], progress=lambda done, of: calls.append((done, of)))
    assert {of for _, of in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total
    assert len(set(done)) >= 6, "reported within the big files too, not only at their ends"


def test_cli_shows_a_progress_bar_when_asked(tmp_path):
    db = str(tmp_path / "cdm.sqlite")
    runner = CliRunner()
    assert runner.invoke(main, ["--db", db, "init"]).exit_code == 0
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(1500)])
    result = runner.invoke(main, ["--db", db, "ingest", "fhir", "--progress", str(folder)])
    assert result.exit_code == 0, result.output
    assert "fhir:" in result.stderr and "B/s" in result.stderr
    assert result.stdout.startswith("1 files: 1,500 resources, 1,500 loaded")
    result = runner.invoke(main, ["--db", db, "ingest", "fhir", "--no-progress", str(folder)])
    assert result.stderr == ""


# -- the quarantine after the site fixes its data ------------------------------------------------------


def test_fixed_input_leaves_the_quarantine(any_cdm, tmp_path):
    folder = tmp_path / "in"
    write_ndjson(folder / "Condition.000.ndjson", [condition("c1", "p9"), condition("c2", "p1", onset="yesterday")])
    write_ndjson(folder / "Patient.000.ndjson", [patient("p1")])
    first = ingest_paths(any_cdm, [folder])
    assert first.quarantined == {"UNKNOWN_PATIENT": 1, "INVALID_RESOURCE": 1}
    assert count(any_cdm, "quarantine") == 2

    write_ndjson(folder / "Condition.000.ndjson", [condition("c1", "p9"), condition("c2", "p1", onset="2020-05-06")])
    write_ndjson(folder / "Patient.000.ndjson", [patient("p1"), patient("p9")])
    second = ingest_paths(any_cdm, [folder])
    assert second.total("quarantined") == 0 and second.by_type["Condition"]["loaded"] == 2
    assert count(any_cdm, "quarantine") == 0, "what loads now is no longer listed as bad"
    assert count(any_cdm, "condition_occurrence") == 2

    # What is still wrong stays: a third run with one of them broken again re-quarantines only it.
    write_ndjson(folder / "Condition.000.ndjson", [condition("c1", "p9"), b'{"resourceType": "Condition", "id"'])
    third = ingest_paths(any_cdm, [folder])
    assert third.quarantined == {"NOT_JSON": 1} and count(any_cdm, "quarantine") == 1
    assert count(any_cdm, "condition_occurrence") == 2, "the loaded c2 is kept: nothing is lost"


# -- --force after the site maps its local codes -------------------------------------------------------


def test_force_remaps_unchanged_resources_after_a_vocabulary_load(tmp_path):
    db = str(tmp_path / "cdm.sqlite")
    runner = CliRunner()
    assert runner.invoke(main, ["--db", db, "init"]).exit_code == 0
    folder = tmp_path / "in"
    local = {"coding": [{"system": "urn:site:dx", "code": "DX-A", "display": "local breast cancer"}]}
    write_ndjson(folder / "Patient.000.ndjson", [patient("p1")])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", code="x") | {"code": local} for i in range(3)])
    assert runner.invoke(main, ["--db", db, "ingest", "fhir", str(folder)]).exit_code == 0
    report = json.loads(runner.invoke(main, ["--db", db, "mapping-report", "--json"]).output)
    assert [(r["code"], r["rows"]) for r in report] == [("urn:site:dx|DX-A", 3)]  # a local system by its URI

    # The site maps its code: the local concept "Maps to" SNOMED 254837009 (malignant neoplasm of breast).
    engine = open_engine(db)
    concept, relationship, co = tables["concept"], tables["concept_relationship"], tables["condition_occurrence"]
    with engine.begin() as conn:
        local_id = conn.execute(select(concept.c.concept_id).where(
            concept.c.vocabulary_id == vocabulary_for_uri("urn:site:dx"), concept.c.concept_code == "DX-A")).scalar_one()
        conn.execute(insert(concept).values(
            concept_id=4112853, concept_name="Malignant neoplasm of breast", domain_id="Condition",
            vocabulary_id="SNOMED", concept_class_id="Clinical Finding", standard_concept="S",
            concept_code="254837009", valid_start_date=dt.date(1970, 1, 1), valid_end_date=dt.date(2099, 12, 31)))
        conn.execute(insert(relationship).values(
            concept_id_1=local_id, concept_id_2=4112853, relationship_id="Maps to",
            valid_start_date=dt.date(1970, 1, 1), valid_end_date=dt.date(2099, 12, 31)))

    plain = json.loads(runner.invoke(main, ["--db", db, "ingest", "fhir", "--json", str(folder)]).output)
    assert plain["unchanged"] == 4 and plain["updated"] == 0
    with engine.connect() as conn:
        assert set(conn.execute(select(co.c.condition_concept_id)).scalars()) == {local_id}, "unchanged: not re-mapped"

    forced = json.loads(runner.invoke(main, ["--db", db, "ingest", "fhir", "--force", "--json", str(folder)]).output)
    assert forced["updated"] == 4 and forced["unchanged"] == 0 and forced["quarantined"] == 0
    with engine.connect() as conn:
        assert conn.execute(select(co.c.condition_concept_id, co.c.condition_source_concept_id).distinct()).all() == [
            (4112853, local_id)]
    assert count(engine, "condition_occurrence") == 3 and count(engine, "person") == 1
    assert json.loads(runner.invoke(main, ["--db", db, "mapping-report", "--json"]).output) == []
    engine.dispose()
