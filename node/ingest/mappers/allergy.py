"""FHIR AllergyIntolerance -> OMOP ``observation`` (HL7 FHIR-to-OMOP IG v1.0 "Allergy" mapping)."""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, reference, required_datetime, source_value


def map_allergy(resource: dict, ctx: MapContext) -> list[Row]:
    """observation whose concept is the allergy's substance/code (FHIR-to-OMOP IG Allergy mapping)."""
    if source_value(resource.get("verificationStatus")) == "entered-in-error":
        return []
    person_id = ctx.person_id(reference(resource.get("patient")))
    day, moment = required_datetime(resource, resource.get("onsetDateTime"), resource.get("recordedDate"),
                                    what="onsetDateTime or recordedDate")
    concept = ctx.concept(resource.get("code"), "Observation")
    return [Row("observation", {
        "observation_id": ctx.row_id("AllergyIntolerance", resource["id"]), "person_id": person_id,
        "observation_concept_id": concept.concept_id, "observation_date": day, "observation_datetime": moment,
        "observation_type_concept_id": EHR,
        "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"),
        "observation_source_value": source_value(resource.get("code")),
        "observation_source_concept_id": concept.source_concept_id,
        "qualifier_source_value": clip(resource.get("criticality"), 50),
    })]
