"""The loader's SQLite fast paths (node/ingest/load.py): the generated row converters bind exactly
what each column type's own bind processor would, on random values; the probe of the rows a table
holds already finds exactly those (62-bit ids); a run writes with a large page cache and gives the
connection its own back.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import Column, Date, DateTime, Integer, MetaData, String, Table, event
from sqlalchemy.dialects import sqlite

from node.ingest.engine import ingest_paths
from cdm.schema import tables
from node.ingest.load import WRITE_CACHE_KIB, _chunks, _present, _sqlite_rows
from tests.test_fhir_ingest_runs import condition, patient, write_ndjson

DIALECT = sqlite.dialect()
TABLE = Table("fast_binds", MetaData(), Column("id", Integer, primary_key=True), Column("day", Date),
              Column("moment", DateTime), Column("note", String))
COLUMNS = ("id", "day", "moment", "note")


def _values(rng: random.Random) -> list:
    """Dates and datetimes of every shape a mapper could give, years < 1000 included."""
    day = dt.date(rng.choice([1, 7, 99, 999, 1000, 1970, 2024, 9999]), rng.randint(1, 12), rng.randint(1, 28))
    moment = dt.datetime.combine(day, dt.time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                                              rng.choice([0, 1, 999_999, rng.randint(0, 999_999)])))
    zone = dt.timezone(dt.timedelta(hours=rng.randint(-12, 12)))
    return [None, day, moment, moment.replace(tzinfo=dt.timezone.utc), moment.replace(tzinfo=zone)]


def _processed(row: tuple) -> tuple:
    """``row`` as SQLAlchemy's bind processors make it."""
    out = []
    for name, value in zip(COLUMNS, row):
        processor = TABLE.c[name].type.dialect_impl(DIALECT).bind_processor(DIALECT)
        out.append(value if value is None or processor is None else processor(value))
    return tuple(out)


@pytest.mark.parametrize("as_tuples", [True, False])
def test_row_converter_binds_what_sqlalchemy_binds(as_tuples):
    rng = random.Random(23)
    rows = []
    for i in range(2_000):
        values = _values(rng)
        # a datetime in a date column and a date in a datetime column are SQLAlchemy's business too
        day = rng.choice(values[:3])
        moment = rng.choice(values)
        rows.append((i, day, moment, f"n{i}"))
    statement, convert = _sqlite_rows(DIALECT, TABLE, COLUMNS, as_tuples)
    got = convert(rows if as_tuples else [dict(zip(COLUMNS, r)) for r in rows])
    assert got == [_processed(r) for r in rows]
    assert any(r[2].__class__ is dt.datetime and r[2].tzinfo is not None for r in rows)  # the fallback was met
    assert any(r[1] is not None and r[1].year < 1000 for r in rows)
    assert statement.startswith("INSERT INTO fast_binds")


def test_row_converter_rejects_what_sqlalchemy_rejects():
    _statement, convert = _sqlite_rows(DIALECT, TABLE, COLUMNS, True)
    with pytest.raises(TypeError):
        convert([(1, "2024-01-02", None, None)])


def test_a_sqlite_run_writes_with_a_large_page_cache_and_gives_it_back(sqlite_cdm, tmp_path):
    with sqlite_cdm.connect() as conn:
        before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    assert before != -WRITE_CACHE_KIB
    folder = tmp_path / "in"
    write_ndjson(folder / "Patient.000.ndjson", [patient(f"p{i}") for i in range(20)])
    write_ndjson(folder / "Condition.000.ndjson", [condition(f"c{i}", f"p{i}") for i in range(20)])
    sizes = []

    @event.listens_for(sqlite_cdm, "before_cursor_execute")
    def inserting(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO condition_occurrence"):
            sizes.append(cursor.connection.execute("PRAGMA cache_size").fetchone()[0])

    summary = ingest_paths(sqlite_cdm, [folder], workers=0)
    event.remove(sqlite_cdm, "before_cursor_execute", inserting)
    assert summary.total("loaded") == 40
    assert sizes == [-WRITE_CACHE_KIB]
    with sqlite_cdm.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == before


def test_the_probe_of_present_rows_finds_exactly_those(sqlite_cdm):
    rng = random.Random(62)
    ids = rng.sample(range(1, 1 << 62), 5_000) + [1, (1 << 62) - 1]
    stored = set(rng.sample(ids, 2_000)) | {(1 << 62) - 1}
    location = tables["location"]
    with sqlite_cdm.begin() as conn:
        conn.execute(location.insert(), [{"location_id": i} for i in sorted(stored)])
        probe = _present("location", conn.dialect.name)
        found = [k for chunk in _chunks(ids) for k in conn.execute(probe, {"keys": chunk}).scalars()]
        assert conn.execute(probe, {"keys": []}).scalars().all() == []
    assert sorted(found) == sorted(stored)
