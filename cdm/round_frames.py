"""Spec -> the frames the model rounds need: survival times, counting-process intervals, biopsies.

The per-person frame of :mod:`cdm.compiler` gives one row per cohort member.  Survival and spatial
rounds need three more shapes, built here from the same cohort CTE and the same :class:`Events`
allowlists (every value a bound parameter, every column positional):

**Survival time** (:func:`survival_frame`, :func:`survival_times`) for a spec's
:class:`cdm.spec.SurvivalTime`, in whole days from the index date:

* event — the first matching record *strictly after* the index day: ``death`` (death table);
  ``episode`` (an episode whose ``episode_concept_id`` *or* ``episode_object_concept_id`` is the
  resolved code: the OMOP oncology extension puts the disease-dynamics concept in the first, while an
  ingest that records "worsening" under a disease episode may put it in the second);
  ``condition`` (``condition_occurrence``, descendants unless ``descendants: false``);
* censoring — the end of the person's observation, ``max(observation_period_end_date)``; for a
  person without an observation period, the last day any clinical record of theirs is dated
  (conditions, procedures, measurements, episodes, images, ctDNA draws, visits);
* an observed event wins over censoring (a death registered after the end of observation is still a
  death); ``max_days`` truncates: ``time > max_days`` becomes ``(max_days, censored)``;
* rows with ``time <= 0`` (observation ends on or before the index day) are dropped and counted as
  ``excluded`` — integer days are kept (no half-day convention), as in Therneau & Grambsch (2000)
  a zero-length follow-up contributes nothing to a risk set.

**Counting-process intervals** (:func:`counting_process`) for time-varying covariates
(Andersen & Gill 1982): a person's follow-up ``[0, T)`` is cut at every day a time-varying variable's
value changes; on ``[start, stop)`` each covariate holds the latest observation at or before
``start`` (last observation carried forward); the last interval carries the event flag.  Observations
on or before day 0 (when the variable's window reaches before the index) set the value at day 0;
observations at or after ``T`` are ignored; intervals before a variable's first observation have no
value and are left out (complete cases).  This is exactly lifelines'
``add_covariate_to_timeline`` followed by ``dropna`` (checked in tests/test_node_rounds.py).

**Biopsy frame** (:func:`biopsy_frame`): one row per ``biopsy_location`` of a cohort member, with its
habitat label, distance to the habitat border, registration error, and ``outcome`` = 1 when the
biopsy's specimen carries a matching ``variant_occurrence`` (same ``specimen_id``), else 0.  Biopsies
without a specimen cannot have an outcome and are counted as ``no_specimen``.

All three run identically on SQLite and PostgreSQL (``days_between`` compiles per dialect).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Integer, case, func, literal, or_, select, union_all

from cdm import spec as S
from cdm.compiler import Context, Resolver, cohort_cte, days_between, events, variable_columns, within
from cdm.schema import tables

T = tables


# -- survival time -------------------------------------------------------------------------------


def _event_source(end, resolver: Resolver):
    """(table, date column, filters) of the records that end follow-up."""
    if end.kind == "death":
        t = T["death"]
        return t, t.c.death_date, []
    if end.kind == "episode":
        t = T["episode"]
        ids = resolver.ids([end.code])
        return t, t.c.episode_start_date, [or_(t.c.episode_concept_id.in_(ids), t.c.episode_object_concept_id.in_(ids))]
    t = T["condition_occurrence"]
    return t, t.c.condition_start_date, [t.c.condition_concept_id.in_(resolver.ids([end.code], end.descendants))]


def _per_person(cohort, table, date, where, agg, label: str):
    """``(person_id, agg(days from index))`` over the cohort's matching rows, one row per person.

    A grouped derived table joined once (hash join) rather than a correlated subquery per person:
    ``death`` has no person index, and on 20k persons the correlated form was ~20x slower."""
    day = days_between(date, cohort.c.index_date)
    return (select(cohort.c.person_id.label("person_id"), agg(day).label(label))
            .select_from(cohort.join(table, table.c.person_id == cohort.c.person_id))
            .where(*where).group_by(cohort.c.person_id).subquery(label))


def first_event_days(end, cohort, resolver: Resolver):
    """Per person: days from index to the first matching record strictly after the index day."""
    table, date, where = _event_source(end, resolver)
    return _per_person(cohort, table, date, [*where, days_between(date, cohort.c.index_date) > 0], func.min, "event_day")


def observation_end_days(cohort):
    """Per person: days from index to the end of their last observation period."""
    op = T["observation_period"]
    return _per_person(cohort, op, op.c.observation_period_end_date, [], func.max, "censor_day")


_RECORD_DATES = (("condition_occurrence", "condition_start_date"), ("procedure_occurrence", "procedure_date"),
                 ("measurement", "measurement_date"), ("episode", "episode_start_date"),
                 ("image_occurrence", "image_occurrence_date"), ("ctdna_result", "result_date"),
                 ("visit_occurrence", "visit_end_date"))


def last_record_days(cohort):
    """Per person: days from index to their latest dated clinical record (the fallback censoring day)."""
    dated = union_all(*(select(T[t].c.person_id.label("person_id"), T[t].c[c].label("day_date"))
                        for t, c in _RECORD_DATES)).subquery("dated")
    return _per_person(cohort, dated, dated.c.day_date, [], func.max, "last_day")


@dataclass
class SurvivalFrame:
    """Query rows: person_id, index_date, v0..v(k-1) (the variables), event_day, censor_day, last_day."""

    query: object
    names: list
    decoders: list
    resolver: Resolver


def survival_frame(spec: S.Spec, time: S.SurvivalTime, names: list[str], resolver: Resolver,
                   site: str = "local") -> SurvivalFrame:
    """One row per cohort member with the variables in ``names`` and the three survival days."""
    cohort = cohort_cte(spec, resolver)
    person = T["person"]
    ctx = Context(cohort.c.person_id, cohort.c.index_date, person)
    cols, decoders = variable_columns([spec.variables[n] for n in names], ctx, resolver, site)
    ends = [first_event_days(time.event, cohort, resolver), observation_end_days(cohort), last_record_days(cohort)]
    cols += [ends[0].c.event_day, ends[1].c.censor_day, ends[2].c.last_day]
    joined = cohort.join(person, person.c.person_id == cohort.c.person_id)
    for sub in ends:
        joined = joined.outerjoin(sub, sub.c.person_id == cohort.c.person_id)
    q = select(cohort.c.person_id, cohort.c.index_date, *cols).select_from(joined).order_by(cohort.c.person_id)
    return SurvivalFrame(q, list(names), decoders, resolver)


@dataclass
class Survival:
    """Survival data of the cohort members kept (``time > 0``), in person order."""

    person_id: np.ndarray
    time: np.ndarray          # int days
    event: np.ndarray         # 0/1
    values: dict = field(default_factory=dict)   # variable name -> list of decoded values (aligned)
    excluded: int = 0          # members dropped for time <= 0 or no follow-up at all


def survival_times(rows, frame: SurvivalFrame, max_days: int | None) -> Survival:
    """Assemble :class:`Survival` from the rows of :func:`survival_frame` (rules in the module doc)."""
    k = len(frame.names)
    pid, time, event, keep_rows, excluded = [], [], [], [], 0
    for row in rows:
        event_day, censor_day, last_day = row[2 + k], row[3 + k], row[4 + k]
        if event_day is not None:
            t, e = int(event_day), 1
        elif censor_day is not None or last_day is not None:
            t, e = int(censor_day if censor_day is not None else last_day), 0
        else:
            excluded += 1
            continue
        if max_days is not None and t > max_days:
            t, e = max_days, 0
        if t <= 0:
            excluded += 1
            continue
        pid.append(row[0]), time.append(t), event.append(e), keep_rows.append(row)
    values = {name: [dec(r[2 + i]) for r in keep_rows] for i, (name, dec) in enumerate(zip(frame.names, frame.decoders))}
    return Survival(np.array(pid, dtype=np.int64), np.array(time, dtype=np.int64), np.array(event, dtype=np.int64),
                    values, excluded)


def compile_survival(spec: S.Spec, time: S.SurvivalTime, names: list[str], bind, site: str = "local") -> Survival:
    """Run :func:`survival_frame` on ``bind`` and return the cohort's :class:`Survival`."""
    frame = survival_frame(spec, time, names, Resolver(bind), site)
    with bind.connect() as conn:
        rows = conn.execute(frame.query).all()
    return survival_times(rows, frame, time.max_days)


# -- counting-process intervals ------------------------------------------------------------------


def observations_query(spec: S.Spec, names: list[str], resolver: Resolver):
    """Dated values of time-varying variables: (person_id, day, var index, value), ordered so that for
    one person, variable and day the row recorded last comes last."""
    cohort = cohort_cte(spec, resolver)
    ctx = Context(cohort.c.person_id, cohort.c.index_date, T["person"])
    parts = []
    for k, name in enumerate(names):
        var = spec.variables[name]
        ev = events(var, resolver)
        day = days_between(ev.date, ctx.index_date)
        parts.append(select(cohort.c.person_id.label("person_id"), day.label("day"),
                            literal(k, Integer).label("var"), ev.value.label("value"), ev.order.label("ord"))
                     .select_from(ev.table).join(cohort, ev.person_id == cohort.c.person_id)
                     .where(*ev.where, ev.value.isnot(None), *within(ev.date, ctx.index_date, var.window)))
    u = union_all(*parts).subquery("obs")
    return select(u.c.person_id, u.c.day, u.c.var, u.c.value).order_by(u.c.person_id, u.c.var, u.c.day, u.c.ord)


@dataclass
class Intervals:
    """Counting-process rows: person, [start, stop), event on the last row, covariates in force."""

    person_id: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    event: np.ndarray
    X: np.ndarray             # rows x len(names), time-varying and static covariates in ``names`` order
    names: list


def split_intervals(survival: Survival, names: list[str], time_varying: list[str], observations) -> Intervals:
    """Cut each person's ``[0, T)`` where a time-varying covariate changes (LOCF); static covariates
    come from ``survival.values``.  ``observations``: (person_id, day, var index into ``time_varying``,
    value) sorted by person, var, day (later rows of a day win)."""
    per_person: dict[int, list[list[tuple[int, float]]]] = {}
    for pid, day, k, value in observations:
        per_person.setdefault(int(pid), [[] for _ in time_varying])[int(k)].append((max(int(day), 0), float(value)))
    out_pid, out_start, out_stop, out_event, out_x = [], [], [], [], []
    for i, pid in enumerate(survival.person_id.tolist()):
        end, event = int(survival.time[i]), int(survival.event[i])
        static = {n: survival.values[n][i] for n in names if n not in time_varying}
        if any(v is None for v in static.values()):
            continue
        steps = []  # per tv variable: [(day, value)] of changes, day < end
        for obs in per_person.get(pid, [[] for _ in time_varying]):
            changes: list[tuple[int, float]] = []
            for day, value in obs:
                if day >= end:
                    break
                if changes and changes[-1][0] == day:
                    changes[-1] = (day, value)
                else:
                    changes.append((day, value))
            steps.append([c for j, c in enumerate(changes) if j == 0 or c[1] != changes[j - 1][1]])
        cuts = sorted({0, *(d for s in steps for d, _ in s)})
        seen, in_force = [0] * len(steps), {name: None for name in time_varying}
        for j, start in enumerate(cuts):
            stop = cuts[j + 1] if j + 1 < len(cuts) else end
            for v, (name, s) in enumerate(zip(time_varying, steps)):  # walk each variable's changes once
                while seen[v] < len(s) and s[seen[v]][0] <= start:
                    in_force[name] = s[seen[v]][1]
                    seen[v] += 1
            if any(v is None for v in in_force.values()):
                continue
            row = [static[n] if n in static else in_force[n] for n in names]
            out_pid.append(pid), out_start.append(start), out_stop.append(stop)
            out_event.append(event if stop == end else 0), out_x.append(row)
    return Intervals(np.array(out_pid, dtype=np.int64), np.array(out_start, dtype=float), np.array(out_stop, dtype=float),
                     np.array(out_event, dtype=np.int64), np.array(out_x, dtype=float).reshape(-1, len(names)), list(names))


def compile_intervals(spec: S.Spec, time: S.SurvivalTime, names: list[str], bind, site: str = "local") -> tuple[Survival, Intervals]:
    """Survival data and counting-process intervals for covariates ``names`` (time-varying ones split)."""
    time_varying = [n for n in names if spec.variables[n].time_varying]
    survival = compile_survival(spec, time, [n for n in names if n not in time_varying], bind, site)
    observations = []
    if time_varying:
        with bind.connect() as conn:
            observations = conn.execute(observations_query(spec, time_varying, Resolver(bind))).all()
    return survival, split_intervals(survival, names, time_varying, observations)


# -- biopsy frame --------------------------------------------------------------------------------


def biopsy_query(spec: S.Spec, resolver: Resolver, gene: str | None, variant_type: str | None):
    """(person_id, biopsy_location_id, habitat_label, distance_to_border_mm, registration_error_mm,
    has_specimen, outcome) per biopsy of a cohort member, in id order."""
    cohort = cohort_cte(spec, resolver)
    b, v = T["biopsy_location"], T["variant_occurrence"]
    match = [v.c.specimen_id.isnot(None)]
    if gene:
        match.append(v.c.target_gene1_symbol == gene if ":" not in gene
                     else v.c.target_gene1_concept_id.in_(resolver.ids([gene])))
    if variant_type:
        match.append(v.c.variant_type == variant_type)
    # a grouped derived table joined once (variant_occurrence has no specimen index: a correlated
    # EXISTS per biopsy would scan it per row)
    carriers = select(v.c.specimen_id).where(*match).group_by(v.c.specimen_id).subquery("carriers")
    outcome = case((carriers.c.specimen_id.isnot(None), 1), else_=0)
    return (select(b.c.person_id, b.c.biopsy_location_id, b.c.habitat_label, b.c.distance_to_border_mm,
                   b.c.registration_error_mm, b.c.specimen_id.isnot(None).label("has_specimen"), outcome.label("outcome"))
            .select_from(b.join(cohort, cohort.c.person_id == b.c.person_id)
                         .outerjoin(carriers, carriers.c.specimen_id == b.c.specimen_id))
            .order_by(b.c.biopsy_location_id))


@dataclass
class Biopsies:
    person_id: np.ndarray
    habitat: list
    distance_mm: np.ndarray
    error_mm: np.ndarray
    outcome: np.ndarray
    no_specimen: int = 0


def biopsy_frame(spec: S.Spec, bind, gene: str | None, variant_type: str | None) -> Biopsies:
    """The cohort's located biopsies with a specimen and the 0/1 outcome (see module doc)."""
    with bind.connect() as conn:
        rows = conn.execute(biopsy_query(spec, Resolver(bind), gene, variant_type)).all()
    kept = [r for r in rows if r.has_specimen]
    return Biopsies(np.array([r.person_id for r in kept], dtype=np.int64), [r.habitat_label for r in kept],
                    np.array([np.nan if r.distance_to_border_mm is None else r.distance_to_border_mm for r in kept], dtype=float),
                    np.array([r.registration_error_mm for r in kept], dtype=float),
                    np.array([int(r.outcome) for r in kept], dtype=np.int64), len(rows) - len(kept))
