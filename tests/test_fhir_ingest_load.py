"""The loader's SQLite fast paths (node/ingest/load.py) give exactly what SQLAlchemy would bind:
the generated row converters against each column type's own bind processor, on random values.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import Column, Date, DateTime, Integer, MetaData, String, Table
from sqlalchemy.dialects import sqlite

from node.ingest.load import _sqlite_rows

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
