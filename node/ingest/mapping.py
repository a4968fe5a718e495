"""Mapping one FHIR resource: the steps the loading process and a worker process both take.

The loader (:mod:`node.ingest.engine`) and the mapping workers (:mod:`node.ingest.worker`) must
judge a resource the same way — skipped type, content hash, what a mapped resource tells the run
about itself (its main row, its identifiers) — or a run's result would depend on where a resource
was mapped.  Each of those rules is declared here, once.
"""

from __future__ import annotations

import hashlib

import orjson

from node.ingest.context import IDENTIFIED_TYPES, RunContext, identifier_key
from node.ingest.contract import Row
from node.ingest.load import key_column

#: Resource types radfed keeps no CDM rows for: counted as skipped, neither validated nor quarantined.
NO_CDM_TABLE = frozenset({"PractitionerRole", "OperationOutcome", "Provenance", "CareTeam", "CarePlan", "Claim",
                          "ExplanationOfBenefit", "SupplyDelivery", "Goal", "Coverage"})
#: The CDM table a conditional reference to each identified type points at.
IDENTIFIED_TABLE = {"Organization": "care_site", "Location": "location", "Practitioner": "provider"}
MAPPING_ERROR = "MAPPING_ERROR"


def content_hash(resource: dict) -> str:
    """Hash of a resource's canonical JSON: whitespace and key order do not make it "changed"."""
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=32).hexdigest()


def failure_reason(resource_type: str, exc: Exception) -> str:
    """The quarantine reason of a mapper that raised on odd input (a bug or an unforeseen shape)."""
    return f"{resource_type} mapper failed: {type(exc).__name__}: {exc}"


def identifiers_of(resource: dict) -> list[tuple[str | None, str]]:
    """``(system, value)`` of the identifiers conditional references may name (identified types only)."""
    if resource.get("resourceType") not in IDENTIFIED_TYPES:
        return []
    return [(i.get("system"), i["value"]) for i in resource.get("identifier") or () if i.get("value")]


def remember(ctx: RunContext, key: str, resource_type: str, resource_id: str,
             identifiers: list[tuple[str | None, str]], rows: list[Row]
             ) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """Tell ``ctx`` what a resource just mapped to ``rows`` provides to later references: its main
    row (the one carrying its own stable id; else the smallest of its first table's, an
    ImagingStudy's first series), a sub-encounter's visit, its identifiers.  Returns the identifier
    aliases ``(alias key, table, row id)`` and what references to it resolve to ``(key, table, id)``."""
    aliases = []
    if resource_type in IDENTIFIED_TYPES:
        row_id = ctx.row_id(resource_type, resource_id)
        for system, value in identifiers:
            alias = identifier_key(resource_type, system, value)
            aliases.append((alias, IDENTIFIED_TABLE[resource_type], row_id))
            ctx.add_alias(alias, row_id)
    main_id = ctx.row_id(resource_type, resource_id)
    main = next((r for r in rows if r.values.get(key_column(r.table)) == main_id), None)
    if main is None:
        main = min((r for r in rows if r.table == rows[0].table), key=lambda r: r.values[key_column(r.table)])
    own = main.values[key_column(main.table)]
    ctx.mark_present(resource_type, resource_id, main.table, None if own == main_id else own)
    provides = [(key, main.table, own)]
    if main.table == "visit_detail":
        ctx.mark_visit_detail(main_id, main.values["visit_occurrence_id"])
        provides.append((key, "visit_occurrence", main.values["visit_occurrence_id"]))
    return aliases, provides
