"""An :class:`AtlasCohort` compiled as Circe runs it (SQLAlchemy Core, every value bound):

1. primary events: the union of the primary criteria's events, in an observation period with
   ``prior_days`` before and ``post_days`` after the event; ``primary_limit``;
2. qualified events: those meeting the additional criteria; ``qualified_limit``;
3. included events: those meeting every inclusion rule; ``expression_limit``;
4. each included event's end (:mod:`cdm.atlas.ends`), then the person's rows collapsed into eras.

Events are re-keyed after the union (``event_id`` unique across domains: a condition and a drug
exposure can share a table id).  The radfed cohort (one row per person) takes the start of the
person's first era as the index date.
"""

from __future__ import annotations

from sqlalchemy import and_, case, func, select, union_all

from cdm.atlas.concepts import ConceptSets
from cdm.atlas.criteria import events_select
from cdm.atlas.ends import cohort_eras
from cdm.atlas.limits import limited
from cdm.atlas.model import AtlasCohort
from cdm.atlas.windows import group_clause
from cdm.schema import tables
from cdm.sqldates import add_days

T = tables


def primary_events(cohort: AtlasCohort, sets: ConceptSets):
    parts = [events_select(ev, sets, group_clause) for ev in cohort.primary]
    union = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery()
    op = T["observation_period"]
    in_period = select(union.c.person_id, union.c.event_id.label("source_event_id"), union.c.start_date,
                       union.c.end_date, union.c.visit_occurrence_id,
                       op.c.observation_period_start_date.label("op_start_date"),
                       op.c.observation_period_end_date.label("op_end_date")).select_from(union.join(op, and_(
                           op.c.person_id == union.c.person_id,
                           union.c.start_date >= op.c.observation_period_start_date,
                           union.c.start_date <= op.c.observation_period_end_date,
                           add_days(op.c.observation_period_start_date, cohort.prior_days) <= union.c.start_date,
                           add_days(union.c.start_date, cohort.post_days) <= op.c.observation_period_end_date))) \
        .subquery()
    keyed = select(in_period.c.person_id, func.row_number().over(order_by=(
        in_period.c.person_id, in_period.c.start_date, in_period.c.source_event_id, in_period.c.end_date))
        .label("event_id"), in_period.c.start_date, in_period.c.end_date, in_period.c.visit_occurrence_id,
        in_period.c.op_start_date, in_period.c.op_end_date).subquery()
    return limited(keyed, cohort.primary_limit).cte("primary_events")


def qualified_events(cohort: AtlasCohort, sets: ConceptSets):
    P = primary_events(cohort, sets)
    if cohort.additional is not None:
        kept = select(*P.c).where(group_clause(cohort.additional, P, sets)).subquery()
    else:
        kept = P
    return limited(kept, cohort.qualified_limit).cte("qualified_events")


def rule_flags(cohort: AtlasCohort, sets: ConceptSets):
    """Qualified events with one 0/1 column per inclusion rule (``r0``, ``r1``...)."""
    Q = qualified_events(cohort, sets)
    flags = [case((group_clause(rule.expression, Q, sets), 1), else_=0).label(f"r{i}")
             for i, rule in enumerate(cohort.inclusion_rules)]
    return select(*Q.c, *flags)


def included_events(cohort: AtlasCohort, sets: ConceptSets):
    Q = qualified_events(cohort, sets)
    rules = [group_clause(rule.expression, Q, sets) for rule in cohort.inclusion_rules]
    kept = select(*Q.c).where(*rules).subquery() if rules else Q
    return limited(kept, cohort.expression_limit).cte("included_events")


def cohort_select(cohort: AtlasCohort, sets: ConceptSets):
    """SELECT ``person_id, cohort_start_date, cohort_end_date``: the cohort table Circe writes."""
    return cohort_eras(cohort, included_events(cohort, sets), sets)


def index_select(cohort: AtlasCohort, sets: ConceptSets):
    """SELECT ``person_id, index_date``: one row per person, index at the first era's start."""
    eras = cohort_select(cohort, sets).subquery()
    return select(eras.c.person_id.label("person_id"), func.min(eras.c.cohort_start_date).label("index_date")) \
        .group_by(eras.c.person_id)


def atlas_index(cohort: AtlasCohort, resolver):
    """:func:`index_select` at the node of ``resolver`` (a :class:`cdm.compiler.Resolver`): its
    connection, and its list of codes this node does not know."""
    return index_select(cohort, ConceptSets(resolver.bind, cohort, resolver.unresolved))
