"""Mapping one FHIR resource: the steps the loading process and a worker process both take.

The loader (:mod:`node.ingest.engine`) and the mapping workers (:mod:`node.ingest.worker`) must
judge a resource the same way — skipped type, content hash, what a mapped resource tells the run
about itself (its main row, its identifiers) — or a run's result would depend on where a resource
was mapped.  Each of those rules is declared here, once.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

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


_BLAKE2B_32 = hashlib.blake2b(digest_size=32)  # copied for each resource: cheaper than a new hash with its parameters


def content_hash(resource: dict) -> str:
    """Hash of a resource's canonical JSON: whitespace and key order do not make it "changed"."""
    hashed = _BLAKE2B_32.copy()
    hashed.update(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS))
    return hashed.hexdigest()


def failure_reason(resource_type: str, exc: Exception) -> str:
    """The quarantine reason of a mapper that raised on odd input (a bug or an unforeseen shape)."""
    return f"{resource_type} mapper failed: {type(exc).__name__}: {exc}"


def identifiers_of(resource: dict) -> list[tuple[str | None, str]]:
    """``(system, value)`` of the identifiers conditional references may name (identified types only)."""
    if resource.get("resourceType") not in IDENTIFIED_TYPES:
        return []
    return [(i.get("system"), i["value"]) for i in resource.get("identifier") or () if i.get("value")]


class Provided(NamedTuple):
    """What a mapped resource provides to later references (see :func:`provided`); a named tuple,
    as it crosses from a worker process to the loader with every resource."""

    #: identifier aliases ``(alias key, table, row id)`` (Organization, Location, Practitioner)
    aliases: list[tuple[str, str, int]]
    #: what references to the resource resolve to ``(key, table, row id)``
    provides: list[tuple[str, str, int]]
    main_table: str
    #: the main row's id when it is not the resource's own stable id (an ImagingStudy's first series)
    main_row: int | None
    #: (visit_detail id, its visit_occurrence id) of a sub-encounter
    detail: tuple[int, int] | None


def provided(ctx: RunContext, key: str, resource_type: str, resource_id: str,
             identifiers: list[tuple[str | None, str]], rows: list[Row]) -> Provided:
    """What a resource just mapped to ``rows`` provides to later references: its main row (the one
    carrying its own stable id; else the smallest of its first table's, an ImagingStudy's first
    series), a sub-encounter's visit, its identifiers.  A function of its rows alone, so a worker
    process computes it and the loader only applies it (:func:`learn`)."""
    main_id = ctx.row_id(resource_type, resource_id)
    aliases = []
    if resource_type in IDENTIFIED_TYPES:
        aliases = [(identifier_key(resource_type, system, value), IDENTIFIED_TABLE[resource_type], main_id)
                   for system, value in identifiers]
    for main in rows:
        if main.values.get(key_column(main.table)) == main_id:
            break
    else:
        main = min((r for r in rows if r.table == rows[0].table), key=lambda r: r.values[key_column(r.table)])
    own = main.values[key_column(main.table)]
    provides = [(key, main.table, own)]
    detail = None
    if main.table == "visit_detail":
        detail = (main_id, main.values["visit_occurrence_id"])
        provides.append((key, "visit_occurrence", detail[1]))
    return Provided(aliases, provides, main.table, None if own == main_id else own, detail)


def learn(ctx: RunContext, resource_type: str, resource_id: str, facts: Provided) -> None:
    """Tell ``ctx`` what a mapped resource provides (:func:`provided`)."""
    for alias, _table, row_id in facts.aliases:
        ctx.add_alias(alias, row_id)
    ctx.mark_present(resource_type, resource_id, facts.main_table, facts.main_row)
    if facts.detail is not None:
        ctx.mark_visit_detail(*facts.detail)


def remember(ctx: RunContext, key: str, resource_type: str, resource_id: str,
             identifiers: list[tuple[str | None, str]], rows: list[Row]) -> Provided:
    """:func:`provided`, told to ``ctx`` (:func:`learn`)."""
    facts = provided(ctx, key, resource_type, resource_id, identifiers, rows)
    learn(ctx, resource_type, resource_id, facts)
    return facts
