"""``radfed-node mapping-report``: the source codes this node could not map, by role, most frequent first.

A coding is unmapped when the CDM column it filled holds no standard concept: a site-local concept
(id >= 2,000,100,000, created at ingest; :mod:`cdm.vocabulary`), or 0 for a code the node knows
without a standard mapping.  Every column the FHIR ingest fills from a coding is counted
(:data:`cdm.vocabulary.CODED_COLUMNS`), by its **role**: the event's own concept, a coded *value*
(``value_as_concept_id``), a *unit*, a route, an anatomic site, a visit type...  So the report's
total equals the ``unmapped codings`` of the ingest summary that loaded the same rows.

The report counts rows in the CDM itself, so it reflects every run so far and shrinks as the site
loads Athena vocabularies or its ``source_to_concept_map`` (``vocab load-map`` re-maps the rows
already loaded).  Codes of a local code system are shown by their system URI (``system|code``, how
a spec names them), never by the internal vocabulary name.  The counting is one grouped UNION ALL
in the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import Engine, func, literal, select, union_all

from cdm.schema import tables
from cdm.vocabulary import CODED_COLUMNS, display_reference, unmapped_clause


@dataclass(frozen=True)
class UnmappedCode:
    table: str
    role: str
    code: str
    name: str | None
    rows: int


def unmapped_codes(engine: Engine, limit: int | None = None) -> list[UnmappedCode]:
    """Source codes without a standard concept, with the number of CDM columns each filled."""
    concept, vocabulary = tables["concept"], tables["vocabulary"]
    parts = []
    for coded in CODED_COLUMNS:
        table = tables[coded.table]
        # The source concept names the code; without a source column, the (site-local) concept does.
        code_concept = table.c[coded.source_column] if coded.source_column else table.c[coded.column]
        source_value = table.c[coded.source_value] if coded.source_value else literal(None)
        parts.append(
            select(literal(coded.table).label("cdm_table"), literal(coded.role).label("role"),
                   code_concept.label("source_concept_id"), source_value.label("source_value"))
            .where(unmapped_clause(table, coded))
        )
    events = union_all(*parts).subquery("events")
    code = func.coalesce(concept.c.concept_code, events.c.source_value)
    n = func.count().label("n")
    query = (
        select(events.c.cdm_table, events.c.role, concept.c.vocabulary_id, vocabulary.c.vocabulary_reference, code,
               concept.c.concept_name, n)
        .select_from(events.outerjoin(concept, concept.c.concept_id == events.c.source_concept_id)
                     .outerjoin(vocabulary, vocabulary.c.vocabulary_id == concept.c.vocabulary_id))
        .group_by(events.c.cdm_table, events.c.role, concept.c.vocabulary_id, vocabulary.c.vocabulary_reference,
                  code, concept.c.concept_name)
        .order_by(func.count().desc(), events.c.cdm_table, events.c.role, concept.c.vocabulary_id, code)
    )
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [UnmappedCode(table, role, display_reference(vocabulary_id, value, uri), name, rows)
                for table, role, vocabulary_id, uri, value, name, rows in conn.execute(query)]


def totals_by_role(codes: list[UnmappedCode]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in codes:
        out[c.role] = out.get(c.role, 0) + c.rows
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def report_text(codes: list[UnmappedCode], limit: int | None = None) -> str:
    """The totals of every code in ``codes``, then the ``limit`` most frequent (all without one)."""
    if not codes:
        return "every source code maps to a standard concept"
    total = sum(c.rows for c in codes)
    roles = ", ".join(f"{role} {n:,}" for role, n in totals_by_role(codes).items())
    shown = f"; the {limit} most frequent" if limit and limit < len(codes) else ""
    lines = [f"{len(codes)} unmapped source codes, {total:,} codings ({roles}){shown}; rows, table, role, code, name:"]
    for c in codes[:limit]:
        lines.append(f"  {c.rows:>8,}  {c.table:<20}  {c.role:<13}  {c.code}  {c.name or ''}")
    return "\n".join(lines)


def report_json(codes: list[UnmappedCode]) -> list[dict]:
    return [asdict(c) for c in codes]
