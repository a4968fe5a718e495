"""Spec -> SQLAlchemy Core.

Every criterion, index event and variable is first described as :class:`Events` — a table, its
person and date columns and a list of bound filters — and then composed: a criterion is
``EXISTS(events within the window of the index)``, the index date is ``MIN(date)`` of the index
events, a variable is a correlated scalar subquery reducing the events' value.  Table and column
names come only from the allowlists below; every value from a spec is a bound parameter, and output
columns are labelled positionally (``v0``, ``v1``...), never with a spec's variable names.

Windows:  ``start <= days_between(event_date, index_date) <= end``.
Age:      ``year(index) - year_of_birth - [birthday not yet reached in the index year]``; the age
          *criterion* tests the same thing on ``YYYYMMDD`` integers (:func:`age_limits`).
"""

from __future__ import annotations

import bisect
import weakref
from dataclasses import dataclass, field
from functools import singledispatch

from sqlalchemy import (
    Date, Integer, and_, case, event, exists, extract, false, func, not_, or_, select, true,
)

from cdm import spec as S
from cdm.schema import tables
from cdm.sqldates import date_key, day_of, days_between  # noqa: F401  (days_between: also imported from here)
from cdm.vocabulary import Vocabulary, parse_reference, standard_equivalents

T = tables
MALE, FEMALE = 8507, 8532


class Resolver:
    """Resolves ``SYSTEM:code`` to concept ids at this node; remembers what it could not resolve."""

    def __init__(self, bind):
        self.bind = bind
        self.vocabulary = Vocabulary(bind)
        self.unresolved: list[str] = []

    def ids(self, codes, descendants: bool = False) -> list[int]:
        found: set[int] = set()
        for code in codes:
            concept_id = self.vocabulary.resolve(code)
            if concept_id is None:
                self.unresolved.append(code)
                continue
            found |= self.vocabulary.descendants(concept_id) if descendants else {concept_id}
            found |= set(standard_equivalents(concept_id))  # RADFED:progression also finds Progression 32949
        return sorted(found)

    def source_ids(self, codes) -> list[int]:
        """The *source* concept ids of ``codes`` (what ``*_source_concept_id`` columns hold): the
        concept of the code itself, not the standard concept it maps to."""
        found: set[int] = set()
        for code in codes:
            match = self.vocabulary.lookup(*parse_reference(code))
            if match is None or not match.source_concept_id:
                self.unresolved.append(code)
                continue
            found.add(match.source_concept_id)
        return sorted(found)


@dataclass
class Events:
    table: object
    person_id: object
    date: object
    where: list = field(default_factory=list)
    value: object = None
    order: object = None


def _range(column, r: S.Range | None) -> list:
    if r is None:
        return []
    out = []
    if r.min is not None:
        out.append(column >= r.min)
    if r.max is not None:
        out.append(column <= r.max)
    return out


@singledispatch
def events(model, resolver: Resolver) -> Events:
    raise TypeError(f"no events for {type(model).__name__}")


def _coded(table, concept_col, date_col, pk, codes, descendants, resolver):
    t = T[table]
    return Events(t, t.c.person_id, t.c[date_col], [t.c[concept_col].in_(resolver.ids(codes, descendants))],
                  order=t.c[pk])


@events.register
def _(m: S.ConditionCriterion, r):
    return _coded("condition_occurrence", "condition_concept_id", "condition_start_date", "condition_occurrence_id", m.codes, m.descendants, r)


@events.register
def _(m: S.ProcedureCriterion, r):
    return _coded("procedure_occurrence", "procedure_concept_id", "procedure_date", "procedure_occurrence_id", m.codes, m.descendants, r)


@events.register
def _(m: S.DrugCriterion, r):
    return _coded("drug_exposure", "drug_concept_id", "drug_exposure_start_date", "drug_exposure_id", m.codes, m.descendants, r)


@events.register
def _(m: S.EpisodeCriterion, r):
    return _coded("episode", "episode_concept_id", "episode_start_date", "episode_id", m.codes, False, r)


@events.register
def _(m: S.EpisodeVar, r):
    return _coded("episode", "episode_concept_id", "episode_start_date", "episode_id", m.codes, False, r)


@events.register
def _(m: S.ConditionVar, r):
    codes = list(m.codes.values()) if isinstance(m.codes, dict) else m.codes
    ev = _coded("condition_occurrence", "condition_concept_id", "condition_start_date", "condition_occurrence_id", codes, m.descendants, r)
    ev.value = ev.table.c.condition_concept_id
    return ev


def _measurement(m, r):
    t = T["measurement"]
    where = [t.c.measurement_concept_id.in_(r.ids([m.code]))]
    if m.unit:
        where.append(t.c.unit_concept_id.in_(r.ids([m.unit])))
    return Events(t, t.c.person_id, t.c.measurement_date, where, t.c.value_as_number, t.c.measurement_id)


def _valued(criterion: type, variable: type, events_of) -> None:
    """Register the events of a measured kind: a variable reads all of them (``events_of``), a
    criterion those whose value lies in its ``value`` range."""

    def in_range(m, r):
        ev = events_of(m, r)
        ev.where += _range(ev.value, m.value)
        return ev

    events.register(criterion, in_range)
    events.register(variable, events_of)


_valued(S.MeasurementCriterion, S.MeasurementVar, _measurement)


def _variant(m, r):
    t = T["variant_occurrence"]
    where = []
    if m.gene:
        where.append(t.c.target_gene1_symbol == m.gene if ":" not in m.gene
                     else t.c.target_gene1_concept_id.in_(r.ids([m.gene])))
    if m.variant_type:
        where.append(t.c.variant_type == m.variant_type)
    if m.hgvs:
        where.append(or_(t.c.hgvs_c == m.hgvs, t.c.hgvs_p == m.hgvs))
    if m.ctdna is not None:
        where.append(t.c.is_ctdna == m.ctdna)
    return Events(t, t.c.person_id, t.c.variant_date, where, order=t.c.variant_occurrence_id)


@events.register
def _(m: S.VariantCriterion, r):
    ev = _variant(m, r)
    t = ev.table
    ev.where += _range(t.c.allele_frequency, m.vaf) + _range(t.c.copy_number, m.copy_number)
    if m.origin:
        ev.where.append(t.c.genetic_origin == m.origin)
    return ev


@events.register
def _(m: S.VariantVar, r):
    ev = _variant(m, r)
    ev.value = {"vaf": ev.table.c.allele_frequency, "copy_number": ev.table.c.copy_number}.get(m.field)
    return ev


def _image(m, r):
    f, o = T["image_feature"], T["image_occurrence"]
    where = [f.c.image_feature_concept_id.in_(r.ids([m.code]))]
    table = f
    if m.modality:
        table = f.join(o, o.c.image_occurrence_id == f.c.image_occurrence_id)
        where.append(o.c.modality_source_value == m.modality)
    if m.roi:
        where.append(f.c.roi_label == m.roi)
    date = select(o.c.image_occurrence_date).where(o.c.image_occurrence_id == f.c.image_occurrence_id).scalar_subquery() \
        if not m.modality else o.c.image_occurrence_date
    return Events(table, f.c.person_id, date, where, f.c.value_as_number, f.c.image_feature_id)


_valued(S.ImageFeatureCriterion, S.ImageFeatureVar, _image)


_CTDNA_FIELDS = {"tumour_fraction", "max_vaf", "mean_vaf"}


@events.register
def _(m: S.CtdnaCriterion, r):
    t = T["ctdna_result"]
    where = []
    if m.detected is not None:
        where.append(t.c.detected == m.detected)
    if m.field:
        where += _range(t.c[m.field], m.value) if m.field in _CTDNA_FIELDS else [false()]
    return Events(t, t.c.person_id, t.c.result_date, where, order=t.c.ctdna_result_id)


@events.register
def _(m: S.CtdnaVar, r):
    t = T["ctdna_result"]
    value = case((t.c.detected, 1.0), else_=0.0) if m.field == "detected" else t.c[m.field]
    return Events(t, t.c.person_id, t.c.result_date, [value.isnot(None)], value, t.c.ctdna_result_id)


def _signal(m, r):
    t = T["signal_window"]
    return Events(t, t.c.person_id, day_of(t.c.window_start_datetime),
                  [t.c.signal_concept_id.in_(r.ids([m.code]))], t.c[m.stat], t.c.window_start_datetime)


@events.register
def _(m: S.SignalCriterion, r):
    ev = _signal(m, r)
    ev.where += _range(ev.value, m.value)
    return ev


@events.register
def _(m: S.SignalVar, r):
    return _signal(m, r)


@events.register
def _(m: S.VisitCriterion, r):
    t = T["visit_occurrence"]
    where = []
    if m.codes:
        where.append(t.c.visit_concept_id.in_(r.ids(m.codes, m.descendants)))
    if m.types:
        where.append(t.c.visit_source_concept_id.in_(r.source_ids(m.types)))
    if m.length_days is not None:
        where += _range(days_between(func.coalesce(t.c.visit_end_date, t.c.visit_start_date), t.c.visit_start_date),
                        m.length_days)
    return Events(t, t.c.person_id, t.c.visit_start_date, where, order=t.c.visit_occurrence_id)


@events.register
def _(m: S.NoteCriterion, r):
    t = T["note"]
    where = [t.c.note_class_concept_id.in_(r.ids(m.codes, m.descendants))] if m.codes else []
    return Events(t, t.c.person_id, t.c.note_date, where, order=t.c.note_id)


@events.register
def _(m: S.DeathCriterion, r):
    t = T["death"]
    return Events(t, t.c.person_id, t.c.death_date, [], order=t.c.death_date)


@events.register
def _(m: S.ObservationStart, r):
    t = T["observation_period"]
    return Events(t, t.c.person_id, t.c.observation_period_start_date, [], order=t.c.observation_period_id)


# -- composition ------------------------------------------------------------------------------------


@dataclass
class Context:
    person_id: object
    index_date: object
    person: object
    variables: dict = field(default_factory=dict)  # the spec's variables (``group`` criteria name them)


def within(date, index_date, window: S.Window) -> list:
    out = []
    if window.start is not None:
        out.append(days_between(date, index_date) >= window.start)
    if window.end is not None:
        out.append(days_between(date, index_date) <= window.end)
    return out


def _matching(ev: Events, ctx: Context, window: S.Window) -> list:
    return [ev.person_id == ctx.person_id, *ev.where, *within(ev.date, ctx.index_date, window)]


def age_at(person, index_date):
    """Whole years of age on ``index_date``."""
    year = extract("year", index_date) - person.c.year_of_birth
    birthday_later = (func.coalesce(person.c.month_of_birth, 1) * 100 + func.coalesce(person.c.day_of_birth, 1)) > (
        extract("month", index_date) * 100 + extract("day", index_date))
    return year - case((birthday_later, 1), else_=0)


def birth_key(person):
    """Date of birth as ``YYYYMMDD``, a missing month or day counted as 1 (as :func:`age_at` does)."""
    return (person.c.year_of_birth * 10000 + func.coalesce(person.c.month_of_birth, 1) * 100
            + func.coalesce(person.c.day_of_birth, 1))


def age_limits(person, index_date, low: int | None, high: int | None) -> list:
    """``low <= age_at(person, index_date) <= high`` as comparisons of ``YYYYMMDD`` integers.

    With ``I`` = :class:`date_key` of the index and ``B`` = :func:`birth_key`, ``I - B`` is
    ``10000 * (year difference) + (month-day difference)`` with ``|month-day difference| < 10000``,
    so ``floor((I - B) / 10000)`` equals ``age_at`` (years, less one when the birthday is later in
    the year) and ``age >= a  <=>  I - B >= 10000 a``, ``age <= b  <=>  I - B < 10000 (b + 1)``: the
    same persons, from one integer expression instead of six date-part extractions per person."""
    diff = date_key(index_date) - birth_key(person)
    out = []
    if low is not None:
        out.append(diff >= int(low) * 10000)
    if high is not None:
        out.append(diff < (int(high) + 1) * 10000)
    return out


def sex_clause(person, values) -> object:
    known = [concept for label, concept in (("M", MALE), ("F", FEMALE)) if label in values]
    clauses = [person.c.gender_concept_id.in_(known)] if known else []
    if "O" in values or "U" in values:
        clauses.append(person.c.gender_concept_id.notin_([MALE, FEMALE]))
    return or_(*clauses)


@singledispatch
def criterion(model, ctx: Context, resolver: Resolver):
    ev = events(model, resolver)
    conds = _matching(ev, ctx, model.window)
    if model.min_count == 1:
        return exists(select(ev.person_id).select_from(ev.table).where(*conds))
    return select(func.count()).select_from(ev.table).where(*conds).scalar_subquery() >= model.min_count


@criterion.register
def _(m: S.AgeCriterion, ctx, r):
    return and_(true(), *age_limits(ctx.person, ctx.index_date, m.min, m.max))


@criterion.register
def _(m: S.SexCriterion, ctx, r):
    return sex_clause(ctx.person, m.values)


@criterion.register
def _(m: S.GroupCriterion, ctx, r):
    var = ctx.variables[m.variable]
    value, _ = variable_column(var.of, ctx, r)
    groups = []
    for label in dict.fromkeys(m.values):
        low, high = var.bounds(label)
        groups.append(and_(value.isnot(None), *([value >= low] if low is not None else []),
                           *([value < high] if high is not None else [])))
    return or_(false(), *groups)


@criterion.register
def _(m: S.AllOf, ctx, r):
    return and_(true(), *(criterion(c, ctx, r) for c in m.all))


@criterion.register
def _(m: S.AnyOf, ctx, r):
    return or_(false(), *(criterion(c, ctx, r) for c in m.any))


@criterion.register
def _(m: S.Not, ctx, r):
    return not_(criterion(m.not_, ctx, r))


def index_select(cohort: S.Cohort, resolver: Resolver):
    ev = events(cohort.index, resolver)
    agg = func.min if cohort.occurrence == "first" else func.max
    return select(ev.person_id.label("person_id"), agg(ev.date).label("index_date")).select_from(ev.table) \
        .where(*ev.where).group_by(ev.person_id)


def cohort_select(spec: S.Spec, resolver: Resolver):
    """(``SELECT person_id, index_date`` of the cohort members, the :class:`Context` it is in): the
    index CTE joined to ``person`` once, filtered by every criterion."""
    if getattr(spec.cohort, "kind", None) == "atlas":  # an ATLAS definition: Circe's logic (cdm/atlas)
        from cdm.atlas.cohort import atlas_index
        idx = atlas_index(spec.cohort, resolver).cte("idx")
    else:
        idx = index_select(spec.cohort, resolver).cte("idx")
    person = T["person"]
    ctx = Context(idx.c.person_id, idx.c.index_date, person, spec.variables)
    c = spec.cohort
    where = [criterion(x, ctx, resolver) for x in c.inclusion]
    where += [not_(criterion(x, ctx, resolver)) for x in c.exclusion]
    if c.age:
        where.append(criterion(c.age, ctx, resolver))
    if c.sex:
        where.append(sex_clause(person, c.sex))
    q = (select(idx.c.person_id, idx.c.index_date)
         .select_from(idx.join(person, person.c.person_id == idx.c.person_id)).where(*where))
    return q, ctx


def cohort_cte(spec: S.Spec, resolver: Resolver):
    """CTE ``cohort(person_id, index_date)``."""
    return cohort_select(spec, resolver)[0].cte("cohort")


# -- variables --------------------------------------------------------------------------------------


def _reduce(ev: Events, conds: list, how: str):
    base = select().select_from(ev.table).where(*conds, ev.value.isnot(None))
    if how in ("first", "last"):
        order = [ev.date, ev.order] if how == "first" else [ev.date.desc(), ev.order.desc()]
        return base.add_columns(ev.value).order_by(*order).limit(1).scalar_subquery()
    agg = {"min": func.min, "max": func.max, "mean": func.avg, "count": func.count}[how]
    return base.add_columns(agg(ev.value)).scalar_subquery()


def variable_column(var, ctx: Context, resolver: Resolver, site: str = "local"):
    """(SQL expression or None, decoder from the raw value to the released value)."""
    kind = var.kind
    if kind == "age":
        return age_at(ctx.person, ctx.index_date), _num
    if kind == "sex":
        return ctx.person.c.gender_concept_id, lambda v: None if v is None else {MALE: "M", FEMALE: "F"}.get(v, "O")
    if kind == "site":
        return None, lambda v: site
    if kind == "groups":
        value, _ = variable_column(var.of, ctx, resolver, site)
        labels, cuts = var.group_labels, var.cuts
        return value, lambda v: None if v is None else labels[bisect.bisect_right(cuts, float(v))]
    ev = events(var, resolver)
    conds = _matching(ev, ctx, var.window)
    if kind == "condition" and var.categorical:
        labels = {}
        for label, code in var.codes.items():
            for cid in resolver.ids([code], var.descendants):
                labels.setdefault(cid, label)
        return _reduce(ev, conds, "first"), lambda v: labels.get(v)
    if ev.value is None or (kind == "variant" and var.field == "presence") or kind in ("condition", "episode"):
        present = exists(select(ev.person_id).select_from(ev.table).where(*conds))
        return case((present, 1.0), else_=0.0), _num
    if kind == "signal" and var.stat == "mean" and var.reduce == "mean":
        return _sample_weighted_mean(ev, conds), _num
    return _reduce(ev, conds, var.reduce), _num


def _sample_weighted_mean(ev: Events, conds: list):
    """``sum(n_w * mean_w) / sum(n_w)`` over the matching windows: the mean of all their samples."""
    n = ev.table.c.n
    return (select(func.sum(n * ev.value) / func.nullif(func.sum(n), 0)).select_from(ev.table)
            .where(*conds, ev.value.isnot(None), n > 0).scalar_subquery())


def _num(v):
    return None if v is None else float(v)


@dataclass
class Frame:
    """``query`` rows: person_id, [index_date,] then variable ``names[i]`` at column ``offset + i``."""

    query: object
    names: list
    decoders: list
    resolver: Resolver
    offset: int = 2


def resolve_variables(variables: list, resolver: Resolver) -> None:
    """Resolve the codes of ``variables`` without building their columns (what a frame that does not
    select them still owes its ``resolver.unresolved``: the warnings a site returns)."""
    for var in variables:
        var = var.of if var.kind == "groups" else var
        if var.kind not in ("age", "sex", "site"):
            events(var, resolver)


def variable_columns(variables: list, ctx: Context, resolver: Resolver, site: str = "local") -> tuple[list, list]:
    """Columns labelled ``v0``, ``v1``... for ``variables`` (models) and their decoders."""
    cols, decoders = [], []
    for i, var in enumerate(variables):
        expr, decode = variable_column(var, ctx, resolver, site)
        cols.append((expr if expr is not None else func.coalesce(None, 0)).label(f"v{i}"))
        decoders.append(decode)
    return cols, decoders


def frame(spec: S.Spec, names: list[str], resolver: Resolver, site: str = "local",
          index_date: bool = True) -> Frame:
    """Per-person rows in person order: person_id, index_date (unless ``index_date=False``), then one
    column ``v<i>`` per variable in ``names``.

    The variables are correlated subqueries in the cohort's own SELECT (``person`` joined once).
    Without ``index_date`` a count does not pay for turning tens of thousands of dates it never reads
    into ``datetime.date`` objects (SQLite returns them as text)."""
    q, ctx = cohort_select(spec, resolver)
    if not index_date:
        q = q.with_only_columns(ctx.person_id)
    cols, decoders = variable_columns([spec.variables[n] for n in names], ctx, resolver, site)
    q = q.add_columns(*cols).order_by(ctx.person_id)
    return Frame(q, names, decoders, resolver, 2 if index_date else 1)


_tuned: "weakref.WeakSet" = weakref.WeakSet()


def _jit_off(dbapi_connection, record, _proxy=None) -> None:
    if _proxy is not None and record.info.get("radfed.jit_off"):  # a checkout of a connection already set
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("SET jit = off")  # a fixed statement: no request text
    cursor.close()
    dbapi_connection.commit()  # session-level, so it survives the pool's rollback on return
    record.info["radfed.jit_off"] = True


def tune_for_queries(engine) -> None:
    """Session settings for the compiler's queries on ``engine`` (idempotent).

    PostgreSQL: JIT off.  A cohort frame's correlated per-person subqueries get a planner cost of
    ~10^6 (rows x subplan), above ``jit_above_cost``, so every crosstab or summary on 100k persons
    paid 110-250 ms of LLVM compilation for an execution of 100-300 ms of index look-ups that JIT
    does not speed up (EXPLAIN ANALYZE in benchmarks/README.md).  Results are unaffected."""
    if engine.dialect.name != "postgresql" or engine in _tuned:
        return
    event.listen(engine, "connect", _jit_off)   # every new connection (a reconnect too)
    event.listen(engine, "checkout", _jit_off)  # and those the pool held before this call
    _tuned.add(engine)


def fetch_rows(conn, query) -> list[tuple]:
    """All rows of ``query`` as plain tuples, with the same values ``conn.execute(query).all()`` gives.

    A cohort frame has tens of thousands of rows; building a SQLAlchemy ``Row`` for each costs more
    than the SQL itself (1.2 us a row: 55 ms for 44,000 persons, benchmarks/README.md).  So the DBAPI
    rows are taken as they are, and each column that has a result processor for this dialect (SQLite
    dates, PostgreSQL numerics typed Float...) is passed through it exactly as SQLAlchemy would."""
    result = conn.execute(query)
    try:
        dialect = conn.dialect
        description = result.cursor.description or []
        processors = [column.type.dialect_impl(dialect).result_processor(dialect, desc[1])
                      for column, desc in zip(query.selected_columns, description)]
        rows = result.cursor.fetchall()
    finally:
        result.close()
    if not any(processors):
        return rows
    return [tuple(v if f is None else f(v) for f, v in zip(processors, row)) for row in rows]


def compile_spec(spec: S.Spec, bind, site: str = "local") -> Frame:
    """The frame of every variable the analysis uses."""
    names = list(dict.fromkeys(n for _, n in S.analysis_variables(spec.analysis)))
    return frame(spec, names, Resolver(bind), site)
