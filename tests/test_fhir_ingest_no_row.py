"""Resources that are loaded but map to no CDM row (entered-in-error, not-done, a report with neither
result, conclusion nor form): their content hash is remembered (``load.NO_ROW``), so a re-run of
unchanged files skips them as it skips resources with rows — not validated, not mapped — and an
update of one replaces what it had, rows or none.

Real SQLite CDMs, real worker processes (``workers=1``) next to the in-process path (``workers=0``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import orjson
import pytest
from sqlalchemy import insert, select

from cdm.ids import stable_id
from cdm.schema import tables
from node.ingest import engine as ingest_engine
from node.ingest.engine import IngestRun, content_hash, ingest_paths
from node.ingest.load import CONFLICTING_HASHES, NO_ROW, existing_hashes, records_of
from node.ingest.mappers import MAPPERS
from node.ingest.worker import MAPPED, UNCHANGED

SUBJECT = {"reference": "Patient/p1"}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-03-04"}
#: A DiagnosticReport of the synthetic export's kind: no result, conclusion or form, so no row.
REPORT = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final", "subject": SUBJECT,
          "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
          "effectiveDateTime": "2021-03-04T10:00:00Z"}
CONCLUDED = {**REPORT, "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "363346000"}]}]}
NOT_DONE = {"resourceType": "Procedure", "id": "pr1", "status": "not-done", "subject": SUBJECT,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86273004"}]},
            "performedDateTime": "2022-01-04"}
DONE = {**NOT_DONE, "status": "completed"}


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


def export(folder: Path, report: dict = REPORT, procedure: dict = NOT_DONE) -> Path:
    write_ndjson(folder / "Patient.000.ndjson", [PATIENT])
    write_ndjson(folder / "Procedure.000.ndjson", [procedure])
    write_ndjson(folder / "DiagnosticReport.000.ndjson", [report])
    return folder


def markers(engine) -> dict[str, str]:
    """source key -> content hash of the NO_ROW records."""
    record = tables["source_record"]
    with engine.connect() as conn:
        return dict(conn.execute(select(record.c.source_key, record.c.content_hash).where(
            record.c.cdm_table == NO_ROW[0], record.c.cdm_id == NO_ROW[1])).all())


def rows(engine, table: str) -> list:
    with engine.connect() as conn:
        return conn.execute(select(tables[table])).all()


class Spy:
    """What a run validated and mapped of each type: in this process (``workers=0``: the engine's
    validator and mappers, wrapped) and in the workers (their records' verdicts, as the loader takes
    them: ``UNCHANGED`` is given before a worker validates or maps)."""

    def __init__(self, monkeypatch):
        self.validated: Counter = Counter()
        self.mapped: Counter = Counter()
        self.verdicts: Counter = Counter()
        problem = ingest_engine.problem

        def validating(resource):
            self.validated[resource["resourceType"]] += 1
            return problem(resource)

        monkeypatch.setattr(ingest_engine, "problem", validating)
        for resource_type, mapper in list(MAPPERS.items()):
            monkeypatch.setitem(MAPPERS, resource_type, self._counting(resource_type, mapper))
        take = IngestRun.take

        def taking(run, source_file, block, handed_out, records):
            for record in records:
                self.verdicts[(record[2], record[6])] += 1
            return take(run, source_file, block, handed_out, records)

        monkeypatch.setattr(IngestRun, "take", taking)

    def _counting(self, resource_type, mapper):
        def counted(resource, ctx):
            self.mapped[resource_type] += 1
            return mapper(resource, ctx)
        return counted

    def reset(self) -> None:
        self.validated.clear(), self.mapped.clear(), self.verdicts.clear()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_rerun_skips_resources_that_map_to_no_row_unvalidated_and_unmapped(sqlite_cdm, tmp_path, monkeypatch,
                                                                              workers):
    spy = Spy(monkeypatch)
    folder = export(tmp_path / "in")
    first = ingest_paths(sqlite_cdm, [folder], workers=workers)
    assert first.skipped == {"DiagnosticReport: maps to no CDM row": 1, "Procedure: maps to no CDM row": 1}
    assert first.total("loaded") == 1
    if workers:
        assert spy.verdicts[("DiagnosticReport", MAPPED)] == spy.verdicts[("Procedure", MAPPED)] == 1
    else:
        assert spy.validated["DiagnosticReport"] == spy.mapped["DiagnosticReport"] == 1
    assert markers(sqlite_cdm) == {"fhir|DiagnosticReport|r1": content_hash(REPORT),
                                   "fhir|Procedure|pr1": content_hash(NOT_DONE)}
    with sqlite_cdm.connect() as conn:
        assert records_of(conn, "fhir|Procedure|pr1") == [], "a marker names no row"
    before = {t: rows(sqlite_cdm, t) for t in ("procedure_occurrence", "observation", "note", "measurement")}

    spy.reset()
    again = ingest_paths(sqlite_cdm, [folder], workers=workers)
    assert (again.total("unchanged"), again.total("skipped"), again.total("loaded"), again.total("updated")) == (3, 0, 0, 0)
    assert spy.validated == Counter() and spy.mapped == Counter(), "nothing validated or mapped in this process"
    if workers:
        assert spy.verdicts == Counter({("Patient", UNCHANGED): 1, ("Procedure", UNCHANGED): 1,
                                        ("DiagnosticReport", UNCHANGED): 1}), "nor in the workers"
    assert {t: rows(sqlite_cdm, t) for t in before} == before

    # --force still maps everything again, and the markers stay what they were
    spy.reset()
    forced = ingest_paths(sqlite_cdm, [folder], workers=workers, force=True)
    assert forced.skipped == first.skipped and forced.total("unchanged") == 0
    if not workers:
        assert spy.mapped["DiagnosticReport"] == spy.mapped["Procedure"] == 1
    assert len(markers(sqlite_cdm)) == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_an_update_from_no_row_to_rows_loads_them_and_drops_the_marker(sqlite_cdm, tmp_path, workers):
    ingest_paths(sqlite_cdm, [export(tmp_path / "v1")], workers=workers)
    assert len(markers(sqlite_cdm)) == 2 and rows(sqlite_cdm, "procedure_occurrence") == []

    summary = ingest_paths(sqlite_cdm, [export(tmp_path / "v2", CONCLUDED, DONE)], workers=workers)
    assert summary.by_type["Procedure"]["updated"] == summary.by_type["DiagnosticReport"]["updated"] == 1
    assert summary.total("skipped") == 0
    assert markers(sqlite_cdm) == {}, "no marker outlives the rows that replaced it"
    with sqlite_cdm.connect() as conn:
        assert records_of(conn, "fhir|Procedure|pr1") == [("procedure_occurrence", stable_id("fhir", "Procedure", "pr1"))]
        assert records_of(conn, "fhir|DiagnosticReport|r1") == [
            ("observation", stable_id("fhir", "DiagnosticReport", "r1", "conclusion", 0))]
    assert len(rows(sqlite_cdm, "procedure_occurrence")) == len(rows(sqlite_cdm, "observation")) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_an_update_from_rows_to_no_row_deletes_them_then_reruns_unchanged(sqlite_cdm, tmp_path, monkeypatch,
                                                                          workers):
    ingest_paths(sqlite_cdm, [export(tmp_path / "v1", CONCLUDED, DONE)], workers=workers)
    assert len(rows(sqlite_cdm, "procedure_occurrence")) == len(rows(sqlite_cdm, "observation")) == 1

    folder = export(tmp_path / "v2")
    summary = ingest_paths(sqlite_cdm, [folder], workers=workers)
    assert summary.skipped == {"DiagnosticReport: maps to no CDM row": 1, "Procedure: maps to no CDM row": 1}
    assert rows(sqlite_cdm, "procedure_occurrence") == rows(sqlite_cdm, "observation") == []
    assert markers(sqlite_cdm) == {"fhir|DiagnosticReport|r1": content_hash(REPORT),
                                   "fhir|Procedure|pr1": content_hash(NOT_DONE)}

    spy = Spy(monkeypatch)
    again = ingest_paths(sqlite_cdm, [folder], workers=workers)
    assert again.total("unchanged") == 3 and again.total("skipped") == 0
    assert spy.validated == Counter() and spy.mapped == Counter()


def test_force_with_workers_replaces_the_rows_of_a_resource_now_mapping_to_none(sqlite_cdm, tmp_path):
    # --force judges nothing unchanged, but a resource loaded before still replaces what it wrote:
    # a worker asks for the stored hashes under --force too, or the old rows would stay
    ingest_paths(sqlite_cdm, [export(tmp_path / "v1", CONCLUDED, DONE)], workers=1)
    ingest_paths(sqlite_cdm, [export(tmp_path / "v2")], workers=1, force=True)
    assert rows(sqlite_cdm, "procedure_occurrence") == rows(sqlite_cdm, "observation") == []
    assert len(markers(sqlite_cdm)) == 2


def test_a_resource_now_mapping_to_no_row_leaves_the_quarantine(sqlite_cdm, tmp_path):
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [PATIENT])
    write_ndjson(folder / "Procedure.000.ndjson", [{**NOT_DONE, "status": 7}])
    assert ingest_paths(sqlite_cdm, [folder], workers=0).total("quarantined") == 1
    write_ndjson(folder / "Procedure.000.ndjson", [NOT_DONE])
    fixed = ingest_paths(sqlite_cdm, [folder], workers=0)
    assert fixed.skipped == {"Procedure: maps to no CDM row": 1}
    assert rows(sqlite_cdm, "quarantine") == [], "the site fixed it: it is loaded, only to no row"


def test_a_resource_with_two_stored_hashes_is_mapped_again_and_replaced(pg_cdm, tmp_path):
    # two runs loading the same resource at once (PostgreSQL), one version to rows and one to none,
    # leave two hashes
    folder = export(tmp_path / "in", procedure=DONE)
    ingest_paths(pg_cdm, [folder], workers=0)
    with pg_cdm.begin() as conn:
        conn.execute(insert(tables["source_record"]).values(
            source_key="fhir|Procedure|pr1", cdm_table=NO_ROW[0], cdm_id=NO_ROW[1],
            content_hash=content_hash(NOT_DONE), loaded_at=dt.datetime(2026, 12, 7)))
    assert existing_hashes(pg_cdm, ["fhir|Procedure|pr1", "fhir|Patient|p1"]) == {
        "fhir|Procedure|pr1": CONFLICTING_HASHES, "fhir|Patient|p1": content_hash(PATIENT)}
    again = ingest_paths(pg_cdm, [folder], workers=1)
    assert again.by_type["Procedure"]["updated"] == 1
    assert "fhir|Procedure|pr1" not in markers(pg_cdm)
    assert existing_hashes(pg_cdm, ["fhir|Procedure|pr1"]) == {"fhir|Procedure|pr1": content_hash(DONE)}
    assert len(rows(pg_cdm, "procedure_occurrence")) == 1
