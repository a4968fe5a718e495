"""Mapping in worker processes (node/ingest/worker.py, pool.py): the CDM, the quarantine, the summary
and the exit status are those of the single-process path; a worker's stale view of the run is
corrected by the loader; a worker that dies is reported and loses nothing.

Real SQLite / PostgreSQL CDMs, real forkserver worker processes, real files.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import signal

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import distinct, func, select

from cdm.db import create_cdm, drop_cdm, open_engine
from cdm.schema import tables
from node.cli import main
from node.ingest.engine import ingest_paths
from node.ingest.pool import WorkerCrashed
from tests.test_fhir_ingest_runs import (
    condition, dump, export_with_duplicates, outcome, patient, rid, write_bundle, write_ndjson,
)


def _export(tmp_path):
    """A synthetic export with a bad file among the good ones, a Bundle, a gzip file and duplicates."""
    export, first = export_with_duplicates(tmp_path)
    person = first["subject"]["reference"][8:]
    # the bad file: not JSON, no resourceType, an invalid resource, an unknown patient, a blank line
    write_ndjson(export / "Condition.002.ndjson", [
        b"{not json", b'{"id": "x"}', condition("bad-date", person, onset="2020-13-45"),
        condition("orphan", "nobody"), b"", condition("fine", person)])
    write_bundle(export / "extra-bundle.json", [patient("bp1"), condition("bc1", "bp1")], "transaction")
    with gzip.open(export / "Procedure.001.ndjson.gz", "wb") as handle:
        handle.write(orjson.dumps({"resourceType": "Procedure", "id": "gz1", "status": "completed",
                                   "subject": {"reference": f"Patient/{person}"},
                                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}]},
                                   "performedDateTime": "2020-05-06T07:08:09Z"}) + b"\n")
    return export


def _fresh(engine) -> None:
    drop_cdm(engine)
    create_cdm(engine, source_name="test-site")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_give_the_rows_quarantine_and_summary_of_one_process(backend, tmp_path, request):
    export = _export(tmp_path)
    engine = request.getfixturevalue("sqlite_cdm" if backend == "sqlite" else "pg_cdm")
    results = {}
    # small batches and units: many batches and units in flight, duplicates across and within them
    for name, workers in (("in-process", 0), ("1 worker", 1), ("2 workers", 2)):
        _fresh(engine)
        summary = ingest_paths(engine, [export], batch_size=37, workers=workers, unit_bytes=4096)
        again = ingest_paths(engine, [export], batch_size=37, workers=workers, unit_bytes=4096)
        rows = dump(engine)
        forced = ingest_paths(engine, [export], batch_size=37, workers=workers, unit_bytes=4096, force=True)
        results[name] = (outcome(summary), rows, outcome(again), outcome(forced), dump(engine))
    reference = results["in-process"]
    for name in ("1 worker", "2 workers"):
        assert results[name][0] == reference[0], f"{name}: the same summary"
        assert results[name][1] == reference[1], f"{name}: the same rows, ids, concepts and quarantine"
        assert results[name][2] == reference[2], f"{name}: the same re-run"
        assert results[name][3:] == reference[3:], f"{name}: the same --force re-run and rows after it"
    summary, rows, again, forced, _ = reference
    # --force maps every resource again: each one read is updated (or skipped again), none unchanged
    assert forced["unchanged"] == forced["loaded"] == 0
    assert forced["updated"] + forced["skipped"] == again["updated"] + again["unchanged"] + again["skipped"]
    assert summary["quarantined_by_reason"] == {"INVALID_RESOURCE": 2, "NOT_A_RESOURCE": 1, "NOT_JSON": 2,
                                                "UNKNOWN_PATIENT": 2}
    assert (summary["by_type"]["Condition"]["updated"], summary["by_type"]["Condition"]["unchanged"]) == (3, 0)
    assert again["loaded"] == 0 and again["unchanged"] > 1000
    assert any(r[0] == rid("Procedure", "gz1") for r in rows["procedure_occurrence"])


def test_cli_exit_status_and_summary_do_not_depend_on_workers(tmp_path):
    export = _export(tmp_path)
    runner = CliRunner()
    outputs = {}
    for workers in (0, 2):
        db = str(tmp_path / f"cdm-{workers}.sqlite")
        assert runner.invoke(main, ["--db", db, "init"]).exit_code == 0
        result = runner.invoke(main, ["--db", db, "ingest", "fhir", "--json", "--workers", str(workers),
                                      "--batch-size", "50", str(export)])
        assert result.exit_code == 3, result.output  # something quarantined: partial
        outputs[workers] = {k: v for k, v in json.loads(result.stdout).items() if k != "seconds"}
    assert outputs[0] == outputs[2]
    assert outputs[2]["quarantined"] == 7


def test_a_stale_worker_answer_is_mapped_again_by_the_loader(any_cdm, tmp_path):
    # Sub-encounters partOf a visit in the first line of the same file, in units of ~150 lines: the
    # worker busy with the first unit is not the one that takes the second, which maps its
    # sub-encounters before the loader has written (or even received) their visit, so it answers
    # "no such visit" and makes visit_occurrences; the loader knows better.
    folder = tmp_path / "in"
    # many small units of Patients: both workers are started (and idle) when the Encounters come
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(1, 2000)])
    visit = {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
             "subject": {"reference": "Patient/p1"}, "period": {"start": "2021-05-01T10:00:00Z"}}
    encounters = [{**visit, "id": "e0"}] + [{**visit, "id": f"e{i}", "partOf": {"reference": "Encounter/e0"}}
                                            for i in range(1, 1201)]
    write_ndjson(folder / "Encounter.000.ndjson", encounters)
    summary = ingest_paths(any_cdm, [folder], workers=2, unit_bytes=32_768)
    assert summary.total("loaded") == 1999 + 1201
    assert summary.remapped > 0, "some sub-encounter was mapped by a worker that had not seen e0"
    detail = tables["visit_detail"]
    with any_cdm.connect() as conn:
        parents = dict(conn.execute(select(detail.c.visit_detail_id, detail.c.visit_occurrence_id)).all())
    assert parents == {rid("Encounter", f"e{i}"): rid("Encounter", "e0") for i in range(1, 1201)}


def test_a_worker_that_dies_is_reported_and_nothing_is_lost(sqlite_cdm, tmp_path):
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(3000)])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", f"p{i % 3000}") for i in range(20000)])
    killed = []

    def kill_a_worker(done: int, total: int) -> None:
        # a real SIGKILL of a real worker, once the Conditions are being mapped
        children = multiprocessing.active_children()
        if not killed and done > total * 0.3 and children:
            victim = children[-1]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    with pytest.raises(WorkerCrashed) as crash:
        ingest_paths(sqlite_cdm, [folder], workers=2, unit_bytes=16_384, batch_size=500, progress=kill_a_worker)
    assert killed
    assert "ended abruptly" in str(crash.value) and "Condition.000.ndjson from line" in str(crash.value)
    assert crash.value.exit_code == 1
    record = tables["source_record"]
    with sqlite_cdm.connect() as conn:
        loaded = conn.execute(select(func.count(distinct(record.c.source_key)))).scalar_one()
    assert 3000 < loaded < 23000, "what came before the lost unit is written, not what came after"
    # the same command again loads exactly what is missing
    again = ingest_paths(sqlite_cdm, [folder], workers=2)
    assert (again.total("quarantined"), again.total("unchanged"), again.total("loaded")) == (0, loaded, 23000 - loaded)
    fresh = open_engine(tmp_path / "fresh.sqlite")
    create_cdm(fresh, source_name="test-site")
    ingest_paths(fresh, [folder], workers=0)
    assert dump(sqlite_cdm) == dump(fresh)


def test_references_beyond_the_caches_are_asked_of_the_cdm_a_unit_at_a_time(sqlite_cdm, tmp_path):
    # 2,000 Patients, then 2,000 Conditions about them, with caches of 300 resources per generation:
    # every Patient is forgotten by the time its Condition comes.  The loader must still find each
    # one (same rows as with large caches), asking the CDM for a unit's patients in one query rather
    # than one query per patient (RunContext.expect).
    from sqlalchemy import event

    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(2000)])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", f"p{i}") for i in range(2000)])
    person_queries = []

    @event.listens_for(sqlite_cdm, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT person.person_id"):
            person_queries.append(statement)

    summary = ingest_paths(sqlite_cdm, [folder], workers=1, unit_bytes=32_768, batch_size=100, cache_size=300)
    event.remove(sqlite_cdm, "before_cursor_execute", count)
    assert summary.total("loaded") == 4000 and summary.total("quarantined") == 0
    occurrence = tables["condition_occurrence"]
    with sqlite_cdm.connect() as conn:
        persons = dict(conn.execute(select(occurrence.c.condition_occurrence_id, occurrence.c.person_id)).all())
    assert persons == {rid("Condition", f"c{i}"): rid("Patient", f"p{i}") for i in range(2000)}
    units = -(-sum(p.stat().st_size for p in (folder / "Condition.000.ndjson",)) // 32_768)
    assert 0 < len(person_queries) <= 4 * units, (len(person_queries), units)  # one each: 2,000


def test_a_worker_asks_for_a_units_forgotten_patients_in_one_query(sqlite_cdm, tmp_path):
    # The worker's own context beyond its caches: 2,000 Patients loaded, then a unit of Conditions
    # about them mapped by a worker that remembers none of them.  It finds every one (no
    # UNKNOWN_PATIENT), asking the CDM for the unit's patients together (expect_references).
    from sqlalchemy import event

    from node.ingest import worker as worker_module
    from node.ingest.worker import MAPPED

    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(2000)])
    ingest_paths(sqlite_cdm, [folder], workers=0)
    block = b"".join(orjson.dumps(condition(f"c{i}", f"p{i}")) + b"\n" for i in range(2000))
    mapper = worker_module._Worker(str(sqlite_cdm.url), "urn:mrn", 100_000, False)
    person_queries = []

    @event.listens_for(mapper.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT person.person_id"):
            person_queries.append(statement)

    records = mapper.unit(("ndjson", str(folder / "Condition.000.ndjson"), "Condition", 1, block))
    mapper.engine.dispose()
    assert [r[6] for r in records] == [MAPPED] * 2000
    assert all(r[7].raised is None for r in records), "every patient was found"
    assert 0 < len(person_queries) <= 2, len(person_queries)  # one per 5,000 ids; one each: 2,000


def test_a_rerun_worker_asks_nothing_about_the_references_of_unchanged_resources(sqlite_cdm, tmp_path):
    # A re-run of loaded files: every resource is judged unchanged by its content hash, so nothing is
    # mapped, and the worker must not ask the CDM about the patients those resources name (at 92k
    # that was ~13% of a re-run's worker CPU).  One changed resource in the unit is still prepared.
    from sqlalchemy import event

    from node.ingest import worker as worker_module
    from node.ingest.worker import MAPPED, UNCHANGED

    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(500)])
    conditions = [condition(f"c{i}", f"p{i}") for i in range(500)]
    write_ndjson(folder / "Condition.000.ndjson", conditions)
    ingest_paths(sqlite_cdm, [folder], workers=0)
    changed = {**conditions[7], "onsetDateTime": "2021-02-03"}
    block = b"".join(orjson.dumps(c) + b"\n" for c in [*conditions[:7], changed, *conditions[8:]])
    mapper = worker_module._Worker(str(sqlite_cdm.url), "urn:mrn", 100_000, False)
    asked = []

    @event.listens_for(mapper.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT person.person_id"):
            asked.append(len(parameters) if isinstance(parameters, (list, tuple)) else 1)

    records = mapper.unit(("ndjson", str(folder / "Condition.000.ndjson"), "Condition", 1, block))
    mapper.engine.dispose()
    assert [r[6] for r in records] == [UNCHANGED] * 7 + [MAPPED] + [UNCHANGED] * 492
    assert records[7][7].raised is None, "the changed resource's patient was found"
    assert sum(asked) == 1, asked  # the changed resource's patient only; 500 if every one were expected


def test_a_workers_records_ship_as_plain_pickle_gives_them(sqlite_cdm, tmp_path):
    # worker.ship pickles the named tuples its own way: the bytes must be pickle.dump's, and they
    # must hold what a resource provides (Provided), its questions and its rows.
    import io
    import pickle

    from node.ingest import worker as worker_module
    from node.ingest.worker import MAPPED, Premapped

    block = b"".join(orjson.dumps(r) + b"\n" for r in [patient("p1"), patient("p2")])
    block += b"{not json\n"
    mapper = worker_module._Worker(str(sqlite_cdm.url), "urn:mrn", 100_000, False)
    records = mapper.unit(("ndjson", str(tmp_path / "Patient.000.ndjson"), "Patient", 1, block))
    records += mapper.unit(("ndjson", str(tmp_path / "Condition.000.ndjson"), "Condition", 1,
                            orjson.dumps(condition("c1", "p1")) + b"\n"))
    mapper.engine.dispose()
    assert [r[6] for r in records] == [MAPPED, MAPPED, worker_module.ERROR, MAPPED]
    assert all(r[7].facts is not None for r in records if r[6] == MAPPED)
    shipped = io.BytesIO()
    worker_module.ship(records, shipped)
    assert shipped.getvalue() == pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(shipped.getvalue())
    assert back == records and type(back[0][7]) is Premapped and type(back[0][7].facts) is type(records[0][7].facts)


def test_a_workers_lines_are_what_the_reader_makes_of_them():
    # worker.ndjson_entries parses a block without the reader's Item for each line: every line must
    # still be what reader.ndjson_item says (a resource, an error, nothing for a blank line).
    from node.ingest.reader import ndjson_item
    from node.ingest.worker import ndjson_entries

    lines = [orjson.dumps(patient("p1")), b"", b"   \t", b"{not json", b"[1, 2]", b'{"id": "x"}',
             b'{"resourceType": 5}', b"null", b'"Patient"', b' {"resourceType": "Patient", "id": "p2"} ',
             b'{"resourceType": "Patient", "id": "p3"}']  # the last without its newline
    block = b"\n".join(lines)
    entries = ndjson_entries("Patient.000.ndjson", "Patient", 7, block)
    expected = [(number, item) for number, line in enumerate(lines, 7)
                if (item := ndjson_item("Patient.000.ndjson", number, line + b"\n", "Patient")) is not None]
    assert [e[0] for e in entries] == [number for number, _ in expected]
    for (number, (start, end), resource, item), (_, reader_item) in zip(entries, expected):
        assert block[start:end].rstrip(b"\n") == lines[number - 7]
        if reader_item.error is None:
            assert item is None and resource == reader_item.resource
        else:
            assert resource is None and (item.error, item.type_hint) == (reader_item.error, reader_item.type_hint)
    assert sum(e[2] is not None for e in entries) == 3 and len(entries) == 9


def test_a_workers_remembered_concepts_ask_and_answer_what_the_run_context_does(sqlite_cdm, tmp_path, monkeypatch):
    # RecordingContext.concept answers a CodeableConcept met before from memory: the records (rows,
    # questions and answers, unmapped counts) must be those of RunContext.concept asked every time,
    # also when a code becomes known meanwhile (the site-local concept the first mapping creates) and
    # for a code that is a second coding first, then a first one.
    from node.ingest import worker as worker_module
    from node.ingest.context import RunContext

    snomed, icdo = "http://snomed.info/sct", "http://terminology.hl7.org/CodeSystem/icd-o-3"
    codeables = [
        {"coding": [{"system": snomed, "code": "254637007", "display": "lung cancer"}]},
        {"coding": [{"system": icdo, "code": "8140/3"}, {"system": snomed, "code": "Z1"}], "text": "adeno"},
        {"coding": [{"system": snomed, "code": "Z1"}]},
        {"coding": [{"system": icdo, "code": "8140/3"}]},
    ]
    resources = [patient("p1")] + [{**condition(f"c{i}", "p1"), "code": codeables[i % 7 % 4]} for i in range(24)]
    block = b"".join(orjson.dumps(r) + b"\n" for r in resources)

    def records():
        mapper = worker_module._Worker(str(sqlite_cdm.url), "urn:mrn", 100_000, False)
        try:
            return mapper.unit(("ndjson", str(tmp_path / "Condition.000.ndjson"), "Condition", 1, block))
        finally:
            mapper.engine.dispose()

    remembered = records()
    monkeypatch.setattr(worker_module.RecordingContext, "concept", RunContext.concept)
    asked_each_time = records()
    assert remembered == asked_each_time
    calls = [q for r in remembered[1:] for q in r[7].calls if q[0] == worker_module.LOOKUP]
    assert any(q[-1] is None for q in calls) and any(q[-1] is not None for q in calls)  # both kinds met
    assert sum(r[7].unmapped for r in remembered[1:]) > 0


def test_the_stored_hashes_of_a_units_keys_are_found_exactly_on_sqlite(sqlite_cdm, tmp_path):
    # existing_hashes sends SQLite the keys as one JSON array (json_each): what it finds must be
    # exactly the stored keys among those asked (odd characters included), by the source_key index.
    import datetime as dt

    from node.ingest.load import SOURCE_RECORD, existing_hashes, hash_lookup

    odd = ['fhir|Patient|quote"d', "fhir|Patient|back\\slash", "fhir|Patient|ünï", "fhir|Patient|comma,[x]"]
    with sqlite_cdm.begin() as conn:
        conn.execute(SOURCE_RECORD.insert(), [
            {"source_key": key, "cdm_table": "person", "cdm_id": i + 1, "content_hash": f"h{i}",
             "loaded_at": dt.datetime(2026, 1, 1)}
            for i, key in enumerate(odd + [f"fhir|Patient|p{i}" for i in range(2500)])])
    asked = odd[:3] + [f"fhir|Patient|p{i}" for i in range(0, 5000, 2)] + ["fhir|Patient|ünï ", "fhir|Patient|P0"]
    found = existing_hashes(sqlite_cdm, asked)
    assert found == {**{key: f"h{i}" for i, key in enumerate(odd[:3])},
                     **{f"fhir|Patient|p{i}": f"h{i + 4}" for i in range(0, 2500, 2)}}
    query = hash_lookup("sqlite", ["a"]).compile(sqlite_cdm)
    with sqlite_cdm.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(query), ('["a"]',)).all()
    assert any("USING INDEX" in step[-1] and "source_key=?" in step[-1] for step in plan), plan
