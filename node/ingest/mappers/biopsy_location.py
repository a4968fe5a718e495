"""Spatially mapped biopsy Observations -> ``biopsy_location``.

**Biopsy locations** (RADFED ``biopsy_location``) -> ``biopsy_location``: ``partOf`` the Procedure,
``specimen`` the core, components x/y/z (mm, patient LPS), registration error, habitat label
(``habitat_*`` concept; the label is the code without its prefix), distance to the habitat border.
"""

from __future__ import annotations

from cdm.ids import stable_id
from node import fhir_profile as fp
from node.ingest.contract import Row, Unmappable
from node.ingest.mappers.image_feature import SERIES_UID
from node.ingest.mappers.imaging_study import dicom_uid
from node.ingest.mappers.values import (
    BAD_VALUE, component_index, component_string, effective, first_code, number, part_of_procedure, reference,
)

#: Length units a biopsy coordinate may come in -> factor to mm.
TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 0.001}

INCOMPLETE_BIOPSY_LOCATION = "INCOMPLETE_BIOPSY_LOCATION"


def _mm(comp: dict | None, what: str, required: bool) -> float | None:
    q = (comp or {}).get("valueQuantity") or {}
    if q.get("value") is None:
        if required:
            raise Unmappable(INCOMPLETE_BIOPSY_LOCATION, f"biopsy_location has no {what}")
        return None
    unit = q.get("code") or q.get("unit") or "mm"
    if unit not in TO_MM:
        raise Unmappable(BAD_VALUE, f"biopsy_location {what} in {unit!r}, not a length unit (mm, cm, m, um)")
    return number(q["value"], what) * TO_MM[unit]


def map_biopsy_location(resource: dict, ctx) -> list[Row]:
    """RADFED ``biopsy_location`` -> ``biopsy_location`` (coordinates, registration error, habitat)."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    effective(resource)
    comps = component_index(resource)

    def comp(code: str) -> dict | None:
        return comps.get((fp.RADFED, code))

    habitat = (comp(fp.HABITAT_LABEL) or {}).get("valueCodeableConcept")
    habitat_code = first_code(habitat)
    procedure = part_of_procedure(resource)
    series_uid = component_string(comps.get(SERIES_UID))
    return [Row("biopsy_location", {
        "biopsy_location_id": ctx.row_id("Observation", resource["id"]),
        "person_id": person_id,
        "procedure_occurrence_id": ctx.reference_id(procedure, "procedure_occurrence") if procedure else None,
        "specimen_id": ctx.reference_id((resource.get("specimen") or {}).get("reference"), "specimen"),
        "image_occurrence_id": stable_id("dicom-series", dicom_uid(series_uid)) if series_uid else None,
        "x_mm": _mm(comp(fp.BIOPSY_X), "x coordinate", True),
        "y_mm": _mm(comp(fp.BIOPSY_Y), "y coordinate", True),
        "z_mm": _mm(comp(fp.BIOPSY_Z), "z coordinate", True),
        "registration_error_mm": _mm(comp(fp.REGISTRATION_ERROR), "registration error", True),
        "habitat_label": (habitat_code.removeprefix("habitat_") if habitat_code else "")[:50] or None,
        "habitat_concept_id": ctx.concept(habitat).concept_id if habitat else None,
        "distance_to_border_mm": _mm(comp(fp.HABITAT_BORDER_DISTANCE), "border distance", False),
    })]
