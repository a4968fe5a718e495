"""FHIR Specimen -> OMOP ``specimen`` (a plasma / cfDNA specimen is a specimen like any other; see :mod:`.ctdna`)."""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, period, reference, required_datetime, source_value


def map_specimen(resource: dict, ctx: MapContext) -> list[Row]:
    """specimen (type -> specimen concept; a plasma/cfDNA specimen is a specimen like any other)."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    collection = resource.get("collection") or {}
    start, _end = period(collection.get("collectedPeriod"))
    day, moment = required_datetime(resource, collection.get("collectedDateTime"), start,
                                    resource.get("receivedTime"), what="collection date or receivedTime")
    concept = ctx.concept(resource.get("type"), "Specimen")
    quantity = collection.get("quantity") or {}
    site = ctx.concept(collection.get("bodySite"), "Spec Anatomic Site") if collection.get("bodySite") else None
    accession = (resource.get("accessionIdentifier") or {}).get("value")
    return [Row("specimen", {
        "specimen_id": ctx.row_id("Specimen", resource["id"]), "person_id": person_id,
        "specimen_concept_id": concept.concept_id, "specimen_type_concept_id": EHR,
        "specimen_date": day, "specimen_datetime": moment, "quantity": quantity.get("value"),
        "unit_concept_id": ctx.unit(quantity).concept_id if quantity else None,
        "unit_source_value": clip(quantity.get("unit") or quantity.get("code"), 50),
        "anatomic_site_concept_id": site.concept_id if site else None,
        "anatomic_site_source_value": source_value(collection.get("bodySite")),
        "specimen_source_id": clip(accession or resource["id"], 50),
        "specimen_source_value": source_value(resource.get("type")),
    })]
