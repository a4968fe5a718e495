"""FHIR Device -> OMOP ``device_exposure`` of the patient it is assigned to."""

from __future__ import annotations

import datetime as dt

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, first_datetime, reference, source_value


def map_device(resource: dict, ctx: MapContext) -> list[Row]:
    """device_exposure of the patient the Device is assigned to; an unassigned Device maps to no row.

    R4 Device has no period of use, so the exposure starts at the manufacture date, else the
    record's ``meta.lastUpdated``, else the day the node loaded it (the first date it knew of the
    assignment).  Observation periods leave device dates out for that reason (:mod:`.periods`).
    """
    if not (resource.get("patient") or {}).get("reference"):
        return []
    person_id = ctx.person_id(reference(resource.get("patient")))
    day, moment = (first_datetime(resource.get("manufactureDate"), (resource.get("meta") or {}).get("lastUpdated"))
                   or (dt.date.today(), None))
    concept = ctx.concept(resource.get("type"), "Device")
    udi = next((u.get("deviceIdentifier") for u in resource.get("udiCarrier") or () if u.get("deviceIdentifier")), None)
    return [Row("device_exposure", {
        "device_exposure_id": ctx.row_id("Device", resource["id"]), "person_id": person_id,
        "device_concept_id": concept.concept_id, "device_exposure_start_date": day,
        "device_exposure_start_datetime": moment, "device_type_concept_id": EHR,
        "unique_device_id": clip(udi or resource.get("distinctIdentifier"), 255),
        "production_id": clip(resource.get("serialNumber") or resource.get("lotNumber"), 255),
        "device_source_value": source_value(resource.get("type")),
        "device_source_concept_id": concept.source_concept_id,
    })]
