"""Radiology-finding Observations -> ``image_feature`` + its ``measurement`` (Medical Imaging CDM).

**Image features** (category ``imaging``, coded by a RADFED image-feature concept, or any Observation
with a DCM 112002 "Series Instance UID" component) -> ``image_feature``: the series named by that
component gives ``image_occurrence_id = stable_id("dicom-series", uid)`` (the series row need not exist
yet: DICOM or the ImagingStudy may arrive later), the DCM 121071 "Finding" component the ROI label,
type RADFED ``type_reader``.  Present/absent findings arrive as valueQuantity 1/0 (or valueBoolean).
As MI-CDM has it, the value is also a ``measurement`` row the feature links to
(:func:`cdm.conformance.feature_measurement`), which is what OHDSI tools read.
"""

from __future__ import annotations

from cdm.conformance import feature_measurement
from cdm.ids import stable_id
from node import fhir_profile as fp
from node.ingest.contract import Row
from node.ingest.mappers.imaging_study import dicom_uid
from node.ingest.mappers.observation import map_general
from cdm.vocabulary import project_concepts
from node.ingest.mappers.values import (
    RADFED_IDS, component_index, component_string, effective, first_code, number, parse_datetime, reference,
)

#: RADFED image-feature concepts, as (system, code) keys of an Observation.code.
IMAGE_FEATURE_CODES = frozenset((fp.RADFED, r["concept_code"]) for r in project_concepts()
                                if r["concept_class_id"] == "Image Feature")
READER_ANNOTATION = RADFED_IDS["type_reader"]
SERIES_UID = (fp.DICOM_DCM, fp.SERIES_INSTANCE_UID)
FINDING = (fp.DICOM_DCM, fp.FINDING)


def _numeric_value(resource: dict, ctx) -> dict:
    out = {"value_as_number": None, "value_as_concept_id": None, "unit_concept_id": None, "unit_source_value": None}
    if (q := resource.get("valueQuantity")) is not None:
        if q.get("value") is not None:
            out["value_as_number"] = number(q["value"], "valueQuantity.value")
        unit = q.get("code") or q.get("unit")
        if unit:
            out["unit_concept_id"] = ctx.unit(q).concept_id
            out["unit_source_value"] = str(unit)[:50]
    elif isinstance(resource.get("valueBoolean"), bool):
        out["value_as_number"] = 1.0 if resource["valueBoolean"] else 0.0
    elif resource.get("valueInteger") is not None:
        out["value_as_number"] = number(resource["valueInteger"], "valueInteger")
    elif resource.get("valueCodeableConcept") is not None:
        out["value_as_concept_id"] = ctx.concept(resource["valueCodeableConcept"]).concept_id
    return out


def map_image_feature(resource: dict, ctx) -> list[Row]:
    """Radiology finding Observation -> ``image_feature`` on the series its DCM 112002 component names.

    Without a series UID the feature cannot be placed on an image: it is kept as a measurement.
    """
    comps = component_index(resource)
    series_uid = component_string(comps.get(SERIES_UID))
    if not series_uid:
        return map_general(resource, ctx)
    person_id = ctx.person_id(reference(resource.get("subject")))
    issued = parse_datetime(resource.get("issued"))
    day, moment = effective(resource)  # a feature without any date is refused like every Observation
    roi = component_string(comps.get(FINDING))
    code = resource.get("code")
    body = (resource.get("bodySite") or {})
    method = first_code(resource.get("method")) or ((resource.get("device") or {}).get("display"))
    feature = {
        "image_feature_id": ctx.row_id("Observation", resource["id"]),
        "person_id": person_id,
        "image_occurrence_id": stable_id("dicom-series", dicom_uid(series_uid)),
        "image_feature_event_field_concept_id": 0,
        "image_feature_concept_id": ctx.concept(code, "Measurement").concept_id,
        "image_feature_source_value": (first_code(code) or "")[:255],
        "image_feature_type_concept_id": READER_ANNOTATION,
        "image_finding_id": stable_id("fhir", "image-finding", dicom_uid(series_uid), roi or ""),
        "anatomic_site_concept_id": ctx.concept(body, "Spec Anatomic Site").concept_id if body else None,
        "roi_label": (roi or "")[:255] or None,
        **_numeric_value(resource, ctx),
        "alg_system": (method or "fhir")[:255],
        "alg_datetime": issued[1] if issued else None,
    }
    measurement = feature_measurement(feature, day, moment,
                                      ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"))
    return [Row("image_feature", feature), Row("measurement", measurement)]
