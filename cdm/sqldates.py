"""SQL date functions for SQLite and PostgreSQL (SQLAlchemy ``FunctionElement`` objects compiled per
dialect): whole days between two dates, a date plus a number of days (Circe's ``DATEADD``), the day
of a timestamp, and a date as the integer ``YYYYMMDD``.  Each is declared once, as its SQL text per
dialect (:func:`_dialect_function`)."""

from __future__ import annotations

from sqlalchemy import Date, Integer, extract
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


def _sql_args(element, compiler, **kw) -> list[str]:
    """The SQL of a function element's arguments, in order."""
    return [compiler.process(clause, **kw) for clause in element.clauses]


def _dialect_function(name: str, sql_type, doc: str, **sql_by_dialect) -> type[FunctionElement]:
    """A SQL function ``name`` returning ``sql_type`` whose text depends on the dialect:
    ``sql_by_dialect`` maps a dialect name (``default`` for any other) to a function from the
    arguments' SQL to the expression's SQL (SQLAlchemy's ``@compiles`` extension)."""
    element = type(name, (FunctionElement,), {"__doc__": doc, "__module__": __name__, "type": sql_type,
                                               "inherit_cache": True, "name": name})
    for dialect, render in sql_by_dialect.items():
        def compile_for(element, compiler, _render=render, **kw):
            return _render(*_sql_args(element, compiler, **kw))

        compiles(element, *(() if dialect == "default" else (dialect,)))(compile_for)
    return element


days_between = _dialect_function(
    "days_between", Integer(), "Whole days from ``earlier`` to ``later`` (both DATE).",
    default=lambda later, earlier: f"({later} - {earlier})",
    sqlite=lambda later, earlier: f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)",
)

add_days = _dialect_function(
    "add_days", Date(), "``date + days`` (Circe's ``DATEADD(day, n, date)``); ``days`` an integer expression or value.",
    default=lambda date, days: f"CAST(({date}) + CAST({days} AS INTEGER) AS DATE)",
    # NULL days give NULL (as date + NULL does elsewhere), so COALESCE(end, start + days_supply, ...) works
    sqlite=lambda date, days: f"date({date}, CAST({days} AS INTEGER) || ' days')",
)

day_of = _dialect_function(
    "day_of", Date(), "The calendar day of a TIMESTAMP, as a DATE (so :data:`days_between` can take it).",
    default=lambda t: f"CAST({t} AS DATE)",
    # CAST(... AS DATE) has NUMERIC affinity in SQLite ('2024-03-01 10:00' -> 2024); date() keeps the day
    sqlite=lambda t: f"date({t})",
)

date_key = _dialect_function(
    "date_key", Integer(), "A DATE as the integer ``YYYYMMDD`` (for age arithmetic without per-part date functions).",
    default=lambda d: f"CAST(EXTRACT(YEAR FROM {d}) * 10000 + EXTRACT(MONTH FROM {d}) * 100 + EXTRACT(DAY FROM {d}) AS INTEGER)",
    # date_part() is double precision (exact for these integers); EXTRACT is numeric since
    # PostgreSQL 14 and twice as slow over 100k rows
    postgresql=lambda d: f"CAST(date_part('year', {d}) * 10000 + date_part('month', {d}) * 100 + date_part('day', {d}) AS INTEGER)",
    # SQLAlchemy stores a SQLite DATE as ISO text ('YYYY-MM-DD', DATETIME with a time after it): one
    # replace() + CAST reads it, where three strftime() calls cost ~0.4 us each per row, which is most
    # of an age-limited count's time on 100k persons (benchmarks/README.md).  CAST stops at the first
    # non-digit, so a time part is ignored.
    sqlite=lambda d: f"CAST(replace({d}, '-', '') AS INTEGER)",
)


def year_of(date):
    return extract("year", date)
