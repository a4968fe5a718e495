"""Date arithmetic Circe's SQL uses, as SQLAlchemy functions for SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Date, extract
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from cdm.compiler import _sql_args, days_between


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


__all__ = ["add_days", "days_between", "year_of"]
