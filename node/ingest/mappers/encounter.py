"""FHIR Encounter -> OMOP ``visit_occurrence`` (or ``visit_detail`` of the visit it is ``partOf``).

HL7 FHIR-to-OMOP IG (v1.0) "Encounter" mapping: the v3-ActCode ``class`` gives the standard Visit
concept (``visit_concept_id``: inpatient, outpatient, emergency); the encounter **type** (first
``Encounter.type``, e.g. SNOMED 185347001 "Encounter for problem") is kept as the source:
``visit_source_value`` (its code; the class code when there is no type) and
``visit_source_concept_id`` (its concept), so specs can select visits by type (the ``visit``
criterion, :class:`cdm.spec.VisitCriterion`).  ``hospitalization.admitSource`` /
``dischargeDisposition`` become ``admitted_from_*`` / ``discharged_to_*``.
"""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, first_datetime, period, reference, required_datetime, source_value

#: v3-ActCode encounter class -> OMOP Visit concept (FHIR-to-OMOP IG Encounter mapping).
VISIT_CLASS = {"AMB": 9202, "IMP": 9201, "ACUTE": 9201, "NONAC": 9201, "EMER": 9203, "OBSENC": 9202}


def map_encounter(resource: dict, ctx: MapContext) -> list[Row]:
    """visit_occurrence; an Encounter that is ``partOf`` a loaded one is a visit_detail of its visit."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    start, end = period(resource.get("period"))
    start_date, start_time = required_datetime(resource, start, what="period.start")
    end_date, end_time = first_datetime(end) or (start_date, start_time)
    klass = (resource.get("class") or {}).get("code")
    concept = VISIT_CLASS.get(klass or "", 0)
    kind = next(iter(resource.get("type") or ()), None)
    kind_concept = ctx.concept(kind, "Visit") if kind else None
    source = source_value(kind) or klass
    source_concept = kind_concept.source_concept_id if kind_concept else 0
    performer = next((p.get("individual") for p in resource.get("participant") or () if p.get("individual")), None)
    provider_id = ctx.reference_id(reference(performer), "provider")
    care_site_id = ctx.reference_id(reference(resource.get("serviceProvider")), "care_site")
    own_id = ctx.row_id("Encounter", resource["id"])
    parent = ctx.reference_id(reference(resource.get("partOf")), "visit_occurrence")
    if parent is not None:
        return [Row("visit_detail", {
            "visit_detail_id": own_id, "person_id": person_id, "visit_detail_concept_id": concept,
            "visit_detail_start_date": start_date, "visit_detail_start_datetime": start_time,
            "visit_detail_end_date": end_date, "visit_detail_end_datetime": end_time,
            "visit_detail_type_concept_id": EHR, "provider_id": provider_id, "care_site_id": care_site_id,
            "visit_detail_source_value": clip(source, 50), "visit_detail_source_concept_id": source_concept,
            "visit_occurrence_id": parent,
        })]
    return [Row("visit_occurrence", {
        "visit_occurrence_id": own_id, "person_id": person_id, "visit_concept_id": concept,
        "visit_start_date": start_date, "visit_start_datetime": start_time,
        "visit_end_date": end_date, "visit_end_datetime": end_time, "visit_type_concept_id": EHR,
        "provider_id": provider_id, "care_site_id": care_site_id, "visit_source_value": clip(source, 50),
        "visit_source_concept_id": source_concept, **_hospitalization(resource.get("hospitalization"), ctx),
    })]


def _hospitalization(stay: dict | None, ctx: MapContext) -> dict:
    """``admitted_from_*`` / ``discharged_to_*`` of Encounter.hospitalization (absent: nothing)."""
    out = {}
    for field, prefix in (("admitSource", "admitted_from"), ("dischargeDisposition", "discharged_to")):
        codeable = (stay or {}).get(field)
        if codeable:
            out[f"{prefix}_concept_id"] = ctx.concept(codeable, "Visit").concept_id
            out[f"{prefix}_source_value"] = source_value(codeable)
    return out
