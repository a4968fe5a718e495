"""When a person leaves the cohort: Circe's end strategy, censoring criteria and era collapse.

* no strategy: the end of the observation period the event is in;
* ``date_offset``: the event's start or end date plus ``offset`` days, at most the end of its
  observation period;
* ``drug_era`` (continuous exposure, Circe ``CustomEra``): the concept set's drug exposures of the
  person (by drug concept or by source concept) are joined into eras where one starts no later than ``gap_days`` after an earlier one
  ends; the event's end is its era's end plus ``offset`` (an event in no era has no strategy end);
* censoring: the first censoring event on or after the event's start, in its observation period;

the event ends at the earliest of these that is not before its start (an event with none leaves
the cohort).  Then the person's cohort rows are collapsed into eras: rows less than ``era_pad``
days apart merge.
"""

from __future__ import annotations

from sqlalchemy import and_, case, func, select, union_all

from cdm.atlas.concepts import ConceptSets
from cdm.atlas.criteria import DOMAINS, events_select
from cdm.atlas.model import AtlasCohort, DrugEraEnd
from cdm.atlas.windows import group_clause
from cdm.schema import tables
from cdm.sqldates import add_days

T = tables
OFFSET_LIMIT = 1_000_000  # days (2,700 years)


def _drug_eras(end: DrugEraEnd, sets: ConceptSets):
    """(person_id, era_start, era_end): eras of the concept set's exposures, ``offset`` added."""
    t = T["drug_exposure"]
    start = t.c.drug_exposure_start_date
    stop = add_days(start, end.days_supply_override) if end.days_supply_override else DOMAINS["drug"].end(t)
    codes = sets.ids(end.codeset)  # an exposure counts by its drug concept and by its source concept
    exposures = union_all(*(select(t.c.person_id, start.label("start_date"), add_days(stop, end.gap_days)
                                   .label("padded_end")).where(column.in_(codes))
                            for column in (t.c.drug_concept_id, t.c.drug_source_concept_id))).subquery()
    return _islands(exposures, end.gap_days, end.offset)


def _islands(rows, pad: int, offset: int = 0):
    """Gaps and islands: rows (person_id, start_date, padded_end) whose start is not after the
    running maximum of the earlier rows' padded ends belong to the same island."""
    earlier = func.max(rows.c.padded_end).over(partition_by=rows.c.person_id,
                                               order_by=(rows.c.start_date, rows.c.padded_end), rows=(None, -1))
    flagged = select(rows.c.person_id, rows.c.start_date, rows.c.padded_end,
                     case((earlier >= rows.c.start_date, 0), else_=1).label("is_start")).subquery()
    grouped = select(flagged.c.person_id, flagged.c.start_date, flagged.c.padded_end,
                     func.sum(flagged.c.is_start).over(
                         partition_by=flagged.c.person_id,
                         order_by=(flagged.c.start_date, flagged.c.is_start.desc(), flagged.c.padded_end),
                         rows=(None, 0)).label("island")).subquery()
    return select(grouped.c.person_id, func.min(grouped.c.start_date).label("era_start"),
                  add_days(func.max(grouped.c.padded_end), offset - pad).label("era_end")) \
        .group_by(grouped.c.person_id, grouped.c.island).subquery()


def cohort_rows(cohort: AtlasCohort, included, sets: ConceptSets):
    """(person_id, start_date, end_date) of each included event that gets an end."""
    I = included
    ends = []
    strategy = cohort.end
    if strategy is None:
        ends.append(select(I.c.event_id, I.c.op_end_date.label("end_date")))
    elif strategy.kind == "date_offset":
        # an offset past any observation period's end ends at it: clamped so SQLite's dates (to 9999) hold it
        offset = max(-OFFSET_LIMIT, min(OFFSET_LIMIT, strategy.offset))
        shifted = add_days(I.c.start_date if strategy.field == "start" else I.c.end_date, offset)
        ends.append(select(I.c.event_id, case((shifted > I.c.op_end_date, I.c.op_end_date), else_=shifted)
                           .label("end_date")))
    else:
        eras = _drug_eras(strategy, sets)
        ends.append(select(I.c.event_id, eras.c.era_end.label("end_date")).select_from(I.join(eras, and_(
            eras.c.person_id == I.c.person_id, I.c.start_date >= eras.c.era_start,
            I.c.start_date <= eras.c.era_end))))
    for ev in cohort.censoring:
        C = events_select(ev, sets, group_clause).subquery()
        ends.append(select(I.c.event_id, func.min(C.c.start_date).label("end_date"))
                    .select_from(I.join(C, and_(C.c.person_id == I.c.person_id, C.c.start_date >= I.c.start_date,
                                                C.c.start_date <= I.c.op_end_date)))
                    .group_by(I.c.event_id))
    E = (union_all(*ends) if len(ends) > 1 else ends[0]).subquery()
    return select(I.c.person_id, I.c.start_date, func.min(E.c.end_date).label("end_date")) \
        .select_from(I.join(E, and_(E.c.event_id == I.c.event_id, E.c.end_date >= I.c.start_date))) \
        .group_by(I.c.person_id, I.c.event_id, I.c.start_date)


def cohort_eras(cohort: AtlasCohort, included, sets: ConceptSets):
    """(person_id, cohort_start_date, cohort_end_date): the cohort as Circe writes it."""
    rows = cohort_rows(cohort, included, sets).subquery()
    padded = select(rows.c.person_id, rows.c.start_date,
                    add_days(rows.c.end_date, cohort.era_pad).label("padded_end")).subquery()
    eras = _islands(padded, cohort.era_pad)
    return select(eras.c.person_id, eras.c.era_start.label("cohort_start_date"),
                  eras.c.era_end.label("cohort_end_date"))

