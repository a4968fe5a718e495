"""The person tables' secondary indexes set aside during a large SQLite load
(node/ingest/deferred_indexes.py): same rows, every index back at the end, after a failure and
after a run that was killed; never on PostgreSQL, never for a small load.

Real SQLite / PostgreSQL CDMs.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event, inspect

from cdm.db import create_cdm, open_engine
from node.ingest import deferred_indexes
from node.ingest.engine import ingest_paths
from tests.test_fhir_ingest_runs import condition, dump, patient, write_ndjson


def _export(folder):
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(300)])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", f"p{i % 300}", onset=f"20{10 + i % 10}-01-02")
                                                   for i in range(900)])
    return folder


def _indexes(engine) -> set[str]:
    with engine.connect() as conn:
        names = {i.table.name for i in deferred_indexes.deferrable()}
        return {found["name"] for table in names for found in inspect(conn).get_indexes(table)}


def _ddl(engine) -> list[str]:
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith(("DROP INDEX", "CREATE INDEX")):
            statements.append(statement.split("(")[0].strip())

    return statements


def test_the_deferrable_indexes_are_the_person_tables_non_unique_ones():
    found = {(i.table.name, i.name) for i in deferred_indexes.deferrable()}
    assert ("measurement", "idx_measurement_person_concept_date") in found
    assert ("condition_occurrence", "idx_condition_occurrence_person_id") in found
    # what the loader itself reads by during a load stays: bookkeeping, vocabulary, unique indexes
    assert not {t for t, _ in found} & {"source_record", "concept", "source_to_concept_map", "pending_reference"}
    assert ("image_occurrence", "idx_image_occurrence_series") not in found


def test_a_load_with_the_indexes_set_aside_writes_the_same_rows_and_rebuilds_every_index(sqlite_cdm, tmp_path):
    folder = _export(tmp_path / "in")
    every = _indexes(sqlite_cdm)
    ddl = _ddl(sqlite_cdm)
    summary = ingest_paths(sqlite_cdm, [folder], workers=0, defer_indexes=True)
    assert summary.total("loaded") == 1200
    dropped = [s for s in ddl if s.startswith("DROP INDEX")]
    assert len(dropped) == len(deferred_indexes.deferrable()), "the indexes were set aside"
    assert len([s for s in ddl if s.startswith("CREATE INDEX")]) == len(dropped)
    assert _indexes(sqlite_cdm) == every
    other = open_engine(tmp_path / "other.sqlite")
    create_cdm(other, source_name="test-site")
    ingest_paths(other, [folder], workers=0, defer_indexes=False)
    assert dump(other) == dump(sqlite_cdm)
    other.dispose()


def test_a_small_load_keeps_the_indexes(sqlite_cdm, tmp_path):
    ddl = _ddl(sqlite_cdm)
    ingest_paths(sqlite_cdm, [_export(tmp_path / "in")], workers=0)
    assert ddl == []


def test_postgresql_never_sets_its_indexes_aside(pg_cdm, tmp_path):
    every = _indexes(pg_cdm)
    ddl = _ddl(pg_cdm)
    ingest_paths(pg_cdm, [_export(tmp_path / "in")], workers=0, defer_indexes=True)
    assert ddl == [] and _indexes(pg_cdm) == every


def test_a_run_that_fails_builds_the_indexes_again(sqlite_cdm, tmp_path):
    every = _indexes(sqlite_cdm)

    def interrupt(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_paths(sqlite_cdm, [_export(tmp_path / "in")], workers=0, defer_indexes=True, progress=interrupt)
    assert _indexes(sqlite_cdm) == every


def test_the_next_run_builds_what_a_killed_run_left_missing(sqlite_cdm, tmp_path):
    every = _indexes(sqlite_cdm)
    with sqlite_cdm.begin() as conn:  # what a run killed during its load leaves
        for index in deferred_indexes.deferrable():
            index.drop(conn)
    assert _indexes(sqlite_cdm) == every - {i.name for i in deferred_indexes.deferrable()}
    ingest_paths(sqlite_cdm, [_export(tmp_path / "in")], workers=0)  # too small to set them aside itself
    assert _indexes(sqlite_cdm) == every
