"""Correlated criteria: windows, occurrence counts and nested groups, evaluated per index event.

``P`` is a set of index events (columns ``person_id, event_id, start_date, end_date,
visit_occurrence_id, op_start_date, op_end_date``).  A criterion holds for an event of ``P`` when
the number of matching events ``A`` of the same person is at least / at most / exactly ``count``,
where ``A`` matches when (Circe's window criteria):

* its start (its end with ``event_end``) lies in the start window, days counted from the index
  event's start (its end with ``index_end``): ``anchor + days * coeff``; a bound without days is
  the observation period's start (coeff -1) or end (+1), or open when the criterion ignores the
  observation period;
* likewise its end for the end window, when there is one;
* it lies in the index event's observation period (unless ``ignore_observation_period``);
* it is in the index event's visit (``restrict_visit``).

A group combines its criteria, demographic criteria and subgroups: ALL, ANY, AT_LEAST n or AT_MOST
n of them; an empty group holds for every event.
"""

from __future__ import annotations

from sqlalchemy import and_, case, distinct, false, func, literal, or_, select, true

from cdm.atlas.concepts import ConceptSets
from cdm.atlas.criteria import compare, events_select
from cdm.atlas.model import Correlated, Demographic, Group, Window
from cdm.schema import tables
from cdm.sqldates import add_days, year_of

T = tables


def _window(w: Window, P, A, event_date, check_period: bool) -> list:
    anchor = P.c.end_date if w.index_end else P.c.start_date
    out = []
    for bound, low in ((w.start, True), (w.end, False)):
        if bound.days is not None:
            limit = add_days(anchor, bound.days * bound.coeff)
        elif check_period:
            limit = P.c.op_start_date if bound.coeff == -1 else P.c.op_end_date
        else:
            continue
        out.append(event_date >= limit if low else event_date <= limit)
    return out


def criterion_clause(c: Correlated, P, sets: ConceptSets):
    """True for the events of ``P`` that meet correlated criterion ``c``."""
    A = events_select(c.events, sets, group_clause).subquery()
    check = not c.ignore_observation_period
    start_date = A.c.end_date if c.start_window.event_end else A.c.start_date
    where = [A.c.person_id == P.c.person_id] + _window(c.start_window, P, A, start_date, check)
    if check:
        where += [A.c.start_date >= P.c.op_start_date, A.c.start_date <= P.c.op_end_date]
    if c.end_window is not None:
        end_date = A.c.start_date if not c.end_window.event_end else A.c.end_date
        where += _window(c.end_window, P, A, end_date, check)
    if c.restrict_visit:
        where.append(A.c.visit_occurrence_id == P.c.visit_occurrence_id)
    occ = c.occurrence
    if occ.type == "at_least" and occ.count <= 1 and not occ.distinct:
        return select(A.c.event_id).where(*where).exists() if occ.count == 1 else true()
    column = {"concept": A.c.concept_id, "start_date": A.c.start_date, "visit": A.c.visit_occurrence_id}[occ.column]
    counted = func.count(distinct(column)) if occ.distinct else func.count(A.c.event_id)
    n = select(counted).where(*where).scalar_subquery()
    return {"exactly": n == occ.count, "at_most": n <= occ.count, "at_least": n >= occ.count}[occ.type]


def demographic_clause(d: Demographic, P, sets: ConceptSets):
    person = T["person"]
    where = [person.c.person_id == P.c.person_id]
    where += compare(year_of(P.c.start_date) - person.c.year_of_birth, d.age)
    for field, column in (("gender", "gender_concept_id"), ("race", "race_concept_id"),
                          ("ethnicity", "ethnicity_concept_id")):
        if getattr(d, field) is not None:
            where.append(person.c[column].in_(sets.concepts(getattr(d, field))))
    where += compare(P.c.start_date, d.start_date) + compare(P.c.end_date, d.end_date)
    return select(person.c.person_id).where(*where).exists()


def group_clause(g: Group, P, sets: ConceptSets):
    """True for the events of ``P`` that meet group ``g``."""
    parts = ([criterion_clause(c, P, sets) for c in g.criteria]
             + [demographic_clause(d, P, sets) for d in g.demographics]
             + [group_clause(x, P, sets) for x in g.groups])
    if not parts:
        return true()
    if g.type == "all":
        return and_(*parts)
    if g.type == "any":
        return or_(false(), *parts)
    met = sum((case((p, 1), else_=0) for p in parts), literal(0))
    return met >= (g.count or 0) if g.type == "at_least" else met <= (g.count or 0)
