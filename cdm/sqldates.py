"""SQL date functions for SQLite and PostgreSQL (SQLAlchemy ``FunctionElement`` objects compiled per dialect):
whole days between two dates, and a date plus a number of days (Circe's ``DATEADD``)."""

from __future__ import annotations

from sqlalchemy import Date, Integer, extract
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


def _sql_args(element, compiler, **kw) -> list[str]:
    """The SQL of a function element's arguments, in order (for the ``@compiles`` functions below)."""
    return [compiler.process(clause, **kw) for clause in element.clauses]


class days_between(FunctionElement):
    """Whole days from ``earlier`` to ``later`` (both DATE)."""

    type = Integer()
    inherit_cache = True
    name = "days_between"


@compiles(days_between)
def _days_default(element, compiler, **kw):
    later, earlier = _sql_args(element, compiler, **kw)
    return f"({later} - {earlier})"


@compiles(days_between, "sqlite")
def _days_sqlite(element, compiler, **kw):
    later, earlier = _sql_args(element, compiler, **kw)
    return f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)"


class add_days(FunctionElement):
    """``date + days`` (Circe's ``DATEADD(day, n, date)``); ``days`` an integer expression or value."""

    type = Date()
    inherit_cache = True
    name = "add_days"


@compiles(add_days)
def _add_days_default(element, compiler, **kw):
    date, days = _sql_args(element, compiler, **kw)
    return f"CAST(({date}) + CAST({days} AS INTEGER) AS DATE)"


@compiles(add_days, "sqlite")
def _add_days_sqlite(element, compiler, **kw):
    date, days = _sql_args(element, compiler, **kw)
    # NULL days give NULL (as date + NULL does elsewhere), so COALESCE(end, start + days_supply, ...) works
    return f"date({date}, CAST({days} AS INTEGER) || ' days')"


def year_of(date):
    return extract("year", date)
