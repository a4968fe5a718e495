"""Date arithmetic Circe's SQL uses, as SQLAlchemy functions for SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Date, Integer, extract
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from cdm.compiler import _sql_args, days_between  # noqa: F401  (days_between: re-exported for this package)


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
    return f"date({date}, printf('%+d days', {days}))"


def year_of(date):
    return extract("year", date)


__all__ = ["add_days", "days_between", "year_of", "Integer"]
