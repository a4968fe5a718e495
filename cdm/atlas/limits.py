"""Circe's event limits: ``PrimaryCriteriaLimit``, ``QualifiedLimit``, ``ExpressionLimit``.

Each keeps, per person, the earliest event (``first``), the latest (``last``) or every event
(``all``) of a set, ordered by start date (ties by event id, as Circe orders them)."""

from __future__ import annotations

from sqlalchemy import func, select


def limited(events, limit: str):
    """``events`` (a subquery or CTE) restricted by ``limit``, as a SELECT of the same columns."""
    if limit == "all":
        return select(*events.c)
    order = (events.c.start_date, events.c.event_id) if limit == "first" else \
        (events.c.start_date.desc(), events.c.event_id.desc())
    ranked = select(*events.c, func.row_number().over(partition_by=events.c.person_id, order_by=order)
                    .label("ordinal")).subquery()
    return select(*(ranked.c[c.name] for c in events.c)).where(ranked.c.ordinal == 1)
