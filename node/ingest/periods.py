"""Observation periods derived from the events a person has in the CDM.

OMOP CDM v5.4 expects every person with data to have an ``observation_period`` covering the span in
which their events were recorded (THEMIS convention: derived from the earliest and latest event
when the source has no enrolment data, as FHIR exports do not).  After each FHIR run the periods of
the persons it touched are recomputed: one period per person, from the earliest start to the
latest end over the event tables (device exposures excepted: R4 Device carries no dates of use,
see :func:`node.ingest.mappers.device.map_device`), with id ``stable_id("fhir", "observation_period", person_id)``.

The minima and maxima are computed in the database by one grouped UNION ALL per chunk of persons;
only the resulting (person, start, end) triples pass through Python, to derive their stable ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, delete, func, insert, select, union_all

from cdm.ids import stable_id
from cdm.schema import tables
from node.ingest.mappers.values import EHR

CHUNK = 1_000

#: (table, start date column, end date column or None) of every table whose rows are events.
EVENT_DATES = (
    ("visit_occurrence", "visit_start_date", "visit_end_date"),
    ("condition_occurrence", "condition_start_date", "condition_end_date"),
    ("drug_exposure", "drug_exposure_start_date", "drug_exposure_end_date"),
    ("procedure_occurrence", "procedure_date", "procedure_end_date"),
    ("measurement", "measurement_date", None),
    ("observation", "observation_date", None),
    ("specimen", "specimen_date", None),
    ("death", "death_date", None),
    ("image_occurrence", "image_occurrence_date", None),
    ("episode", "episode_start_date", "episode_end_date"),
    ("note", "note_date", None),
)


def period_id(person_id: int) -> int:
    return stable_id("fhir", "observation_period", person_id)


def _spans(person_ids: list[int]):
    parts = []
    for name, start, end in EVENT_DATES:
        table = tables[name]
        end_column = func.coalesce(table.c[end], table.c[start]) if end else table.c[start]
        parts.append(select(table.c.person_id.label("person_id"), table.c[start].label("start_date"),
                            end_column.label("end_date")).where(table.c.person_id.in_(person_ids)))
    events = union_all(*parts).subquery("events")
    return (select(events.c.person_id, func.min(events.c.start_date), func.max(events.c.end_date))
            .group_by(events.c.person_id))


def recompute(engine: Engine, person_ids: Iterable[int]) -> int:
    """Rewrite the observation periods of ``person_ids``; returns how many persons have one."""
    period = tables["observation_period"]
    ids = sorted(set(person_ids))
    written = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        with engine.begin() as conn:
            spans = conn.execute(_spans(chunk)).all()
            conn.execute(delete(period).where(period.c.person_id.in_(chunk)))
            rows = [{"observation_period_id": period_id(person_id), "person_id": person_id,
                     "observation_period_start_date": first, "observation_period_end_date": max(first, last),
                     "period_type_concept_id": EHR}
                    for person_id, first, last in spans if first is not None]
            if rows:
                conn.execute(insert(period), rows)
            written += len(rows)
    return written
