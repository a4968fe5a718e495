"""``radfed-node mapping-report``: the source codes this node could not map, most frequent first.

A code is unmapped when the rows it produced carry no standard concept: concept 0, or a site-local
concept (id >= 2,000,100,000, created at ingest; :mod:`cdm.vocabulary`).  The report counts rows in
the CDM itself, so it reflects every run so far and shrinks as the site loads Athena vocabularies or
its ``source_to_concept_map`` and reloads with ``radfed-node ingest fhir --force`` (an unchanged resource is
not re-mapped otherwise).  The counting is one grouped UNION ALL in the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import Engine, func, literal, or_, select, union_all

from cdm.schema import tables
from node.ingest.context import SITE_LOCAL_MIN

#: (table, concept column, source concept column, source value column) of each coded event table.
CODED_COLUMNS = (
    ("condition_occurrence", "condition_concept_id", "condition_source_concept_id", "condition_source_value"),
    ("procedure_occurrence", "procedure_concept_id", "procedure_source_concept_id", "procedure_source_value"),
    ("drug_exposure", "drug_concept_id", "drug_source_concept_id", "drug_source_value"),
    ("device_exposure", "device_concept_id", "device_source_concept_id", "device_source_value"),
    ("measurement", "measurement_concept_id", "measurement_source_concept_id", "measurement_source_value"),
    ("observation", "observation_concept_id", "observation_source_concept_id", "observation_source_value"),
    ("specimen", "specimen_concept_id", None, "specimen_source_value"),
)


@dataclass(frozen=True)
class UnmappedCode:
    table: str
    vocabulary_id: str | None
    code: str | None
    name: str | None
    rows: int


def unmapped_codes(engine: Engine, limit: int | None = None) -> list[UnmappedCode]:
    """Source codes without a standard concept, with the number of CDM rows each produced."""
    concept = tables["concept"]
    parts = []
    for name, concept_column, source_concept_column, value_column in CODED_COLUMNS:
        table = tables[name]
        # The source concept names the code; the specimen table has none, so its own concept does.
        code_concept = table.c[source_concept_column] if source_concept_column else table.c[concept_column]
        parts.append(
            select(literal(name).label("cdm_table"), code_concept.label("source_concept_id"),
                   table.c[value_column].label("source_value"))
            .where(or_(table.c[concept_column] == 0, table.c[concept_column] >= SITE_LOCAL_MIN))
        )
    events = union_all(*parts).subquery("events")
    query = (
        select(events.c.cdm_table, concept.c.vocabulary_id, func.coalesce(concept.c.concept_code, events.c.source_value),
               concept.c.concept_name, func.count().label("n"))
        .select_from(events.outerjoin(concept, concept.c.concept_id == events.c.source_concept_id))
        .group_by(events.c.cdm_table, concept.c.vocabulary_id,
                  func.coalesce(concept.c.concept_code, events.c.source_value), concept.c.concept_name)
        .order_by(func.count().desc(), events.c.cdm_table, concept.c.vocabulary_id,
                  func.coalesce(concept.c.concept_code, events.c.source_value))
    )
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [UnmappedCode(*row) for row in conn.execute(query)]


def report_text(codes: list[UnmappedCode]) -> str:
    if not codes:
        return "every source code maps to a standard concept"
    lines = [f"{len(codes)} unmapped source codes (rows, table, vocabulary:code, name):"]
    for c in codes:
        lines.append(f"  {c.rows:>8,}  {c.table:<20}  {c.vocabulary_id or '?'}:{c.code or '?'}  {c.name or ''}")
    return "\n".join(lines)


def report_json(codes: list[UnmappedCode]) -> list[dict]:
    return [asdict(c) for c in codes]
