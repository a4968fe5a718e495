"""FHIR Procedure -> OMOP ``procedure_occurrence`` (HL7 FHIR-to-OMOP IG v1.0 "Procedure" mapping)."""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, first_datetime, period, reference, required_datetime, source_value


def map_procedure(resource: dict, ctx: MapContext) -> list[Row]:
    """procedure_occurrence (performed[x] gives the dates; ``not-done`` procedures are no event)."""
    if resource.get("status") in ("not-done", "entered-in-error"):
        return []
    person_id = ctx.person_id(reference(resource.get("subject")))
    start, end = period(resource.get("performedPeriod"))
    day, moment = required_datetime(resource, resource.get("performedDateTime"), start, what="performed[x]")
    finished = first_datetime(end)
    concept = ctx.concept(resource.get("code"), "Procedure")
    actor = next((p.get("actor") for p in resource.get("performer") or () if p.get("actor")), None)
    return [Row("procedure_occurrence", {
        "procedure_occurrence_id": ctx.row_id("Procedure", resource["id"]), "person_id": person_id,
        "procedure_concept_id": concept.concept_id, "procedure_date": day, "procedure_datetime": moment,
        "procedure_end_date": finished[0] if finished else None,
        "procedure_end_datetime": finished[1] if finished else None, "procedure_type_concept_id": EHR,
        "provider_id": ctx.reference_id(reference(actor), "provider"),
        "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"),
        "procedure_source_value": source_value(resource.get("code")),
        "procedure_source_concept_id": concept.source_concept_id,
    })]
