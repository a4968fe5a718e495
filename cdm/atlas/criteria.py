"""Circe criteria -> SQLAlchemy Core: the events of one domain with their attribute filters.

Every criterion becomes a SELECT of ``person_id, event_id, start_date, end_date,
visit_occurrence_id, concept_id`` over one OMOP table (names from :data:`DOMAINS` only, values
bound).  Start and end dates are Circe's: a missing end is ``start + 1 day`` for point events,
a drug exposure's is ``start + days_supply`` before that.  A criterion's ``first`` keeps the
person's earliest event of its concept set *before* the other filters, as Circe orders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Integer, and_, cast, func, not_, null, select, true

from cdm.atlas.concepts import ConceptSets
from cdm.atlas.model import DateFilter, Events, NumberFilter
from cdm.schema import tables
from cdm.sqldates import add_days, days_between, year_of

T = tables


def _plus_one(start: str) -> Callable:
    return lambda t: add_days(t.c[start], 1)


@dataclass(frozen=True)
class DomainTable:
    table: str
    event_id: str
    concept: str | None
    start: str
    end: Callable  # table -> end date expression
    source: str | None = None
    visit: str | None = "visit_occurrence_id"


DOMAINS = {
    "condition": DomainTable("condition_occurrence", "condition_occurrence_id", "condition_concept_id",
                             "condition_start_date",
                             lambda t: func.coalesce(t.c.condition_end_date, add_days(t.c.condition_start_date, 1)),
                             "condition_source_concept_id"),
    "procedure": DomainTable("procedure_occurrence", "procedure_occurrence_id", "procedure_concept_id", "procedure_date",
                             _plus_one("procedure_date"), "procedure_source_concept_id"),  # Circe ignores its end date
    "drug": DomainTable("drug_exposure", "drug_exposure_id", "drug_concept_id", "drug_exposure_start_date",
                        lambda t: func.coalesce(t.c.drug_exposure_end_date,
                                                add_days(t.c.drug_exposure_start_date, t.c.days_supply),
                                                add_days(t.c.drug_exposure_start_date, 1)),
                        "drug_source_concept_id"),
    "measurement": DomainTable("measurement", "measurement_id", "measurement_concept_id", "measurement_date",
                               _plus_one("measurement_date"), "measurement_source_concept_id"),
    "observation": DomainTable("observation", "observation_id", "observation_concept_id", "observation_date",
                               _plus_one("observation_date"), "observation_source_concept_id"),
    "visit": DomainTable("visit_occurrence", "visit_occurrence_id", "visit_concept_id", "visit_start_date",
                         lambda t: t.c.visit_end_date, "visit_source_concept_id"),
    "observation_period": DomainTable("observation_period", "observation_period_id", None,
                                      "observation_period_start_date",
                                      lambda t: t.c.observation_period_end_date, visit=None),
    "death": DomainTable("death", "person_id", "cause_concept_id", "death_date", _plus_one("death_date"),
                         "cause_source_concept_id", visit=None),
    "drug_era": DomainTable("drug_era", "drug_era_id", "drug_concept_id", "drug_era_start_date",
                            lambda t: t.c.drug_era_end_date, visit=None),
    "condition_era": DomainTable("condition_era", "condition_era_id", "condition_concept_id",
                                 "condition_era_start_date", lambda t: t.c.condition_era_end_date, visit=None),
    "device": DomainTable("device_exposure", "device_exposure_id", "device_concept_id", "device_exposure_start_date",
                          lambda t: func.coalesce(t.c.device_exposure_end_date,
                                                  add_days(t.c.device_exposure_start_date, 1)),
                          "device_source_concept_id"),
    "specimen": DomainTable("specimen", "specimen_id", "specimen_concept_id", "specimen_date",
                            _plus_one("specimen_date"), visit=None),
    "visit_detail": DomainTable("visit_detail", "visit_detail_id", "visit_detail_concept_id",
                                "visit_detail_start_date", lambda t: t.c.visit_detail_end_date,
                                "visit_detail_source_concept_id"),
    "dose_era": DomainTable("dose_era", "dose_era_id", "drug_concept_id", "dose_era_start_date",
                            lambda t: t.c.dose_era_end_date, visit=None),
}

#: the table column each value filter reads, per domain (the translator refuses the others)
VALUE_COLUMNS = {"value": "value_as_number", "value_concepts": "value_as_concept_id", "unit": "unit_concept_id",
                 "range_low": "range_low", "range_high": "range_high"}
COUNT_COLUMNS = {"drug_era": "drug_exposure_count", "condition_era": "condition_occurrence_count"}


def compare(column, f: NumberFilter | DateFilter | None) -> list:
    """Circe's ``NumericRange`` / ``DateRange``: ``op`` against ``value`` (``bt``: value..extent)."""
    if f is None:
        return []
    v, x = f.value, f.extent
    if f.op in ("bt", "!bt"):
        inside = and_(column >= v, column <= (x if x is not None else v))
        return [inside if f.op == "bt" else not_(inside)]
    return [{"lt": column < v, "lte": column <= v, "eq": column == v, "!eq": column != v,
             "gt": column > v, "gte": column >= v}[f.op]]


def _codeset_filter(t, dom: DomainTable, ev: Events, sets: ConceptSets) -> list:
    """The concept set (on the concept column) and source concept set (on the source column)."""
    where = []
    if ev.codeset is not None and dom.concept:
        where.append(t.c[dom.concept].in_(sets.ids(ev.codeset)))
    if ev.source_codeset is not None:
        where.append(t.c[dom.source].in_(sets.ids(ev.source_codeset)))
    return where


def events_select(ev: Events, sets: ConceptSets, correlate: Callable):
    """The events ``ev`` describes, as a SELECT (see the module docstring for its columns).
    ``correlate(group, events, sets)``: the clause of a correlated group over events
    (:func:`cdm.atlas.windows.group_clause`, passed in: the two recurse into each other)."""
    dom = DOMAINS[ev.domain]
    t = T[dom.table]
    start, end = t.c[dom.start], dom.end(t)
    event_id = t.c[dom.event_id]
    where = _codeset_filter(t, dom, ev, sets)
    if ev.first:  # the first event of the concept sets, before the other filters (Circe's ordinal)
        a = t.alias()  # its own FROM: never correlated with the outer table
        ranked = select(a.c[dom.event_id].label("event_id"), func.row_number().over(
            partition_by=a.c.person_id, order_by=(a.c[dom.start], a.c[dom.event_id])).label("ordinal")) \
            .where(true(), *_codeset_filter(a, dom, ev, sets)).subquery()
        where.append(event_id.in_(select(ranked.c.event_id).where(ranked.c.ordinal == 1)))
    where += compare(start, ev.start_date) + compare(end, ev.end_date)
    for name, column in VALUE_COLUMNS.items():
        f = getattr(ev, name)
        if f is None:
            continue
        if name in ("value_concepts", "unit"):
            where.append(t.c[column].in_(sets.concepts(f)))
        else:
            where += compare(t.c[column], f)
    if ev.range_low_ratio is not None:
        where += compare(t.c.value_as_number / func.nullif(t.c.range_low, 0), ev.range_low_ratio)
    if ev.range_high_ratio is not None:
        where += compare(t.c.value_as_number / func.nullif(t.c.range_high, 0), ev.range_high_ratio)
    if ev.era_length is not None or ev.period_length is not None:
        where += compare(days_between(end, start), ev.era_length or ev.period_length)
    if ev.occurrence_count is not None:
        where += compare(t.c[COUNT_COLUMNS[ev.domain]], ev.occurrence_count)
    if ev.visit_concepts is not None:
        v = T["visit_occurrence"]
        where.append(select(v.c.visit_occurrence_id).where(
            v.c.visit_occurrence_id == t.c.visit_occurrence_id, v.c.person_id == t.c.person_id,
            v.c.visit_concept_id.in_(sets.concepts(ev.visit_concepts))).exists())
    if ev.provider_specialty is not None:
        pr = T["provider"]
        where.append(select(pr.c.provider_id).where(
            pr.c.provider_id == t.c.provider_id,
            pr.c.specialty_concept_id.in_(sets.concepts(ev.provider_specialty))).exists())
    if ev.age is not None or ev.gender is not None:
        person = T["person"]
        demo = [person.c.person_id == t.c.person_id]
        if ev.age is not None:
            demo += compare(year_of(start) - person.c.year_of_birth, ev.age)
        if ev.gender is not None:
            demo.append(person.c.gender_concept_id.in_(sets.concepts(ev.gender)))
        where.append(select(person.c.person_id).where(*demo).exists())
    q = select(t.c.person_id.label("person_id"), event_id.label("event_id"), start.label("start_date"),
               end.label("end_date"),
               (t.c[dom.visit] if dom.visit else cast(null(), Integer)).label("visit_occurrence_id"),
               (t.c[dom.concept] if dom.concept else cast(null(), Integer)).label("concept_id")).where(true(), *where)
    if ev.correlated is None:
        return q
    anchored = with_observation_period(q.subquery())
    return select(*(anchored.c[c] for c in ("person_id", "event_id", "start_date", "end_date",
                                            "visit_occurrence_id", "concept_id"))) \
        .where(correlate(ev.correlated, anchored, sets))


def with_observation_period(events):
    """``events`` (a subquery) with the observation period each event starts in (events outside
    every period are dropped, as in Circe)."""
    op = T["observation_period"]
    return select(*events.c, op.c.observation_period_start_date.label("op_start_date"),
                  op.c.observation_period_end_date.label("op_end_date")) \
        .select_from(events.join(op, and_(op.c.person_id == events.c.person_id,
                                          events.c.start_date >= op.c.observation_period_start_date,
                                          events.c.start_date <= op.c.observation_period_end_date))).subquery()
