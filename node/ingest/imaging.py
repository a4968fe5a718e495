"""Imaging and device-stream FHIR resources -> ``image_occurrence``, ``image_feature``, ``biopsy_location``,
``signal_window`` (conventions of :mod:`node.fhir_profile`).

**ImagingStudy** -> one ``image_occurrence`` row per series (Medical Imaging CDM, Park et al. JDI 2024),
id ``stable_id("dicom-series", SeriesInstanceUID)`` — the id the DICOM ingest
(:mod:`node.dicom.mapping`) gives the same series, so the two ways in meet on one row whichever comes
first.  The merge rule, applied by the ingest's writer (:mod:`node.ingest.load`, insert-or-fill):

* no row yet: the ImagingStudy inserts it, ``image_source = "fhir"``, ``instance_count`` from
  ``numberOfInstances``;
* a row DICOM wrote first (``file`` / ``scp`` / ``pull``): the ImagingStudy only fills the columns
  DICOM left empty (NULL or concept 0) and changes nothing DICOM set, ``image_source`` included;
* DICOM arriving after the ImagingStudy does the mirror image (mapping.py ``_write_series``: fill
  what is empty, keep what is set, except ``local_path`` / ``instance_count``, which only the files
  know);
* an updated ImagingStudy replaces the rows only it wrote; a row DICOM also recorded in
  ``source_record`` is kept and only filled.

So the columns only DICOM knows (``local_path``, ``manufacturer``, ``referenced_series_uid``) are
never written from FHIR, and the first writer's values win everywhere else.

**Image features** (category ``imaging``, coded by a RADFED image-feature concept, or any Observation
with a DCM 112002 "Series Instance UID" component) -> ``image_feature``: the series named by that
component gives ``image_occurrence_id = stable_id("dicom-series", uid)`` (the series row need not exist
yet: DICOM or the ImagingStudy may arrive later), the DCM 121071 "Finding" component the ROI label,
type RADFED ``type_reader``.  Present/absent findings arrive as valueQuantity 1/0 (or valueBoolean).

**Biopsy locations** (RADFED ``biopsy_location``) -> ``biopsy_location``: ``partOf`` the Procedure,
``specimen`` the core, components x/y/z (mm, patient LPS), registration error, habitat label
(``habitat_*`` concept; the label is the code without its prefix), distance to the habitat border.

**Wearables** (``valueSampledData``, FHIR R4 SampledData: value = origin + factor x datum, ``period`` ms
between samples, ``dimensions`` interleaved, ``E``/``L``/``U`` not numbers) -> ``signal_window`` rows of
:data:`node.fhir_profile.WEARABLE_WINDOW_SECONDS` from ``effectivePeriod.start``: n, mean, sample SD,
min, max of the valid samples, id ``row_id("Observation", id, "window", k)`` (dimension d>0: part
``("window", d, k)``).  Windows without a valid sample give no row.
"""

from __future__ import annotations

import datetime as dt
import math
from functools import cache

from cdm.ids import stable_id
from node import fhir_profile as fp
from node.ingest.contract import Row, Unmappable, mapper
from node.ingest.observations import (
    BAD_VALUE, NO_DATE, RADFED_CONCEPTS, RADFED_IDS, component_index, component_string, effective,
    first_code, map_general, number, parse_instant,
)

#: RADFED image-feature concepts, as (system, code) keys of an Observation.code.
IMAGE_FEATURE_CODES = frozenset((fp.RADFED, r["concept_code"]) for r in RADFED_CONCEPTS
                                if r["concept_class_id"] == "Image Feature")
READER_ANNOTATION = RADFED_IDS["type_reader"]
SERIES_UID = (fp.DICOM_DCM, fp.SERIES_INSTANCE_UID)
FINDING = (fp.DICOM_DCM, fp.FINDING)
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: Length units a biopsy coordinate may come in -> factor to mm.
TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 0.001}

MISSING_STUDY_UID = "MISSING_STUDY_UID"
MISSING_SERIES_UID = "MISSING_SERIES_UID"
INCOMPLETE_BIOPSY_LOCATION = "INCOMPLETE_BIOPSY_LOCATION"


def _uid(value: str | None) -> str | None:
    if not value:
        return None
    return value[8:] if value.startswith("urn:oid:") else value


@cache
def _body_part_terms() -> dict[str, str]:
    """SNOMED code -> DICOM BodyPartExamined term, so both ingests write the same source value."""
    from node.dicom.mapping import BODY_PART_SNOMED  # pydicom only once an ImagingStudy arrives

    return {code: term for term, (code, _) in BODY_PART_SNOMED.items()}


# -- ImagingStudy -------------------------------------------------------------------------------------

@mapper("ImagingStudy")
def map_imaging_study(resource: dict, ctx) -> list[Row]:
    """ImagingStudy -> one ``image_occurrence`` row per series (merged with DICOM as the module docstring says)."""
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    study_uid = next((_uid(i.get("value")) for i in resource.get("identifier") or ()
                      if i.get("system") == DICOM_UID_SYSTEM and i.get("value")), None)
    if study_uid is None:
        raise Unmappable(MISSING_STUDY_UID, "ImagingStudy has no identifier with system urn:dicom:uid")
    study_start = parse_instant(resource.get("started"))
    visit_id = ctx.reference_id((resource.get("encounter") or {}).get("reference"), "visit_occurrence")
    procedure = (resource.get("procedureReference") or {}).get("reference")
    procedure_id = ctx.reference_id(procedure, "procedure_occurrence") if procedure else None
    rows = []
    for series in resource.get("series") or ():
        if not series.get("uid"):
            raise Unmappable(MISSING_SERIES_UID, f"ImagingStudy {resource.get('id')} has a series without its uid")
        when = parse_instant(series.get("started")) or study_start
        if when is None:
            raise Unmappable(NO_DATE, f"ImagingStudy series {series.get('uid')} has no started date, nor has the study")
        modality = series.get("modality") or {}
        body = series.get("bodySite") or {}
        instances = series.get("instance") or ()
        count = series.get("numberOfInstances", len(instances) or None)
        sop_class = next((_uid((i.get("sopClass") or {}).get("code")) for i in instances if i.get("sopClass")), None)
        rows.append(Row("image_occurrence", {
            "image_occurrence_id": stable_id("dicom-series", series["uid"]),
            "person_id": person_id,
            "procedure_occurrence_id": procedure_id,
            "visit_occurrence_id": visit_id,
            "anatomic_site_concept_id": ctx.concept({"coding": [body]}, "Spec Anatomic Site").concept_id if body else None,
            "anatomic_site_source_value": (_body_part_terms().get(body.get("code")) or body.get("code") or "")[:64] or None,
            "image_occurrence_date": when[0],
            "image_occurrence_datetime": when[1],
            "image_study_uid": study_uid,
            "image_series_uid": series["uid"],
            "modality_concept_id": ctx.concept({"coding": [modality]}, "Procedure").concept_id,
            "modality_source_value": (modality.get("code") or "")[:16] or None,
            "sop_class_uid": (sop_class or "")[:64] or None,
            "series_description": (series.get("description") or "")[:255] or None,
            "instance_count": count,
            "image_source": "fhir",
        }))
    return rows


# -- imaging-feature Observations ------------------------------------------------------------------------

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
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    issued = parse_instant(resource.get("issued"))
    effective(resource)  # a feature without any date is refused like every Observation
    roi = component_string(comps.get(FINDING))
    code = resource.get("code")
    body = (resource.get("bodySite") or {})
    method = first_code(resource.get("method")) or ((resource.get("device") or {}).get("display"))
    return [Row("image_feature", {
        "image_feature_id": ctx.row_id("Observation", resource["id"]),
        "person_id": person_id,
        "image_occurrence_id": stable_id("dicom-series", _uid(series_uid)),
        "image_feature_event_field_concept_id": 0,
        "image_feature_concept_id": ctx.concept(code, "Measurement").concept_id,
        "image_feature_source_value": (first_code(code) or "")[:255],
        "image_feature_type_concept_id": READER_ANNOTATION,
        "image_finding_id": stable_id("fhir", "image-finding", _uid(series_uid), roi or ""),
        "anatomic_site_concept_id": ctx.concept(body, "Spec Anatomic Site").concept_id if body else None,
        "roi_label": (roi or "")[:255] or None,
        **_numeric_value(resource, ctx),
        "alg_system": (method or "fhir")[:255],
        "alg_datetime": issued[1] if issued else None,
    })]


# -- spatially mapped biopsies ---------------------------------------------------------------------------

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
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    effective(resource)
    comps = component_index(resource)

    def comp(code: str) -> dict | None:
        return comps.get((fp.RADFED, code))

    habitat = (comp(fp.HABITAT_LABEL) or {}).get("valueCodeableConcept")
    habitat_code = first_code(habitat)
    procedure = next((p.get("reference") for p in resource.get("partOf") or ()
                      if (p.get("reference") or "").startswith(("Procedure/", "urn:uuid:"))), None)
    series_uid = component_string(comps.get(SERIES_UID))
    return [Row("biopsy_location", {
        "biopsy_location_id": ctx.row_id("Observation", resource["id"]),
        "person_id": person_id,
        "procedure_occurrence_id": ctx.reference_id(procedure, "procedure_occurrence") if procedure else None,
        "specimen_id": ctx.reference_id((resource.get("specimen") or {}).get("reference"), "specimen"),
        "image_occurrence_id": stable_id("dicom-series", _uid(series_uid)) if series_uid else None,
        "x_mm": _mm(comp(fp.BIOPSY_X), "x coordinate", True),
        "y_mm": _mm(comp(fp.BIOPSY_Y), "y coordinate", True),
        "z_mm": _mm(comp(fp.BIOPSY_Z), "z coordinate", True),
        "registration_error_mm": _mm(comp(fp.REGISTRATION_ERROR), "registration error", True),
        "habitat_label": (habitat_code.removeprefix("habitat_") if habitat_code else "")[:50] or None,
        "habitat_concept_id": ctx.concept(habitat).concept_id if habitat else None,
        "distance_to_border_mm": _mm(comp(fp.HABITAT_BORDER_DISTANCE), "border distance", False),
    })]


# -- wearables: valueSampledData -> signal_window ----------------------------------------------------------

def _start(resource: dict) -> dt.datetime:
    period = resource.get("effectivePeriod") or {}
    for value in (period.get("start"), resource.get("effectiveDateTime"), resource.get("effectiveInstant")):
        found = parse_instant(value)
        if found is not None:
            return found[1] or dt.datetime.combine(found[0], dt.time())
    raise Unmappable(NO_DATE, "sampled-data Observation has no effective start")


def _windows(sampled: dict, what: str) -> dict[tuple[int, int], list[float]]:
    """(dimension, window index) -> valid sample values."""
    try:
        period_ms = float(sampled["period"])
        dims = int(sampled.get("dimensions") or 1)
        origin = float((sampled.get("origin") or {}).get("value") or 0.0)
        factor = float(sampled.get("factor", 1.0))
    except (KeyError, TypeError, ValueError):
        raise Unmappable(BAD_VALUE, f"{what}: SampledData needs numeric period, dimensions, origin") from None
    if not (period_ms > 0 and dims > 0):
        raise Unmappable(BAD_VALUE, f"{what}: SampledData period {period_ms} and dimensions {dims} must be positive")
    window_ms = fp.WEARABLE_WINDOW_SECONDS * 1000.0
    out: dict[tuple[int, int], list[float]] = {}
    for i, token in enumerate((sampled.get("data") or "").split()):
        if token in ("E", "L", "U"):  # error / below / above the detection limit: not a value
            continue
        try:
            value = origin + factor * float(token)
        except ValueError:
            raise Unmappable(BAD_VALUE, f"{what}: sample {i} {token!r} is not a number") from None
        if not math.isfinite(value):
            continue
        key = (i % dims, int((i // dims) * period_ms // window_ms))
        bucket = out.get(key)
        if bucket is None:
            out[key] = [value]
        else:
            bucket.append(value)
    return out


def _summary(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def map_sampled_data(resource: dict, ctx) -> list[Row]:
    """``valueSampledData`` (and component streams) -> ``signal_window`` rows."""
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    start = _start(resource)
    device_id = ctx.reference_id((resource.get("device") or {}).get("reference"), "device_exposure")
    streams = []
    if "valueSampledData" in resource:
        streams.append((resource.get("code"), resource["valueSampledData"], ()))
    for i, comp in enumerate(resource.get("component") or ()):
        if "valueSampledData" in comp:
            streams.append((comp.get("code"), comp["valueSampledData"], ("component", i)))
    rows = []
    for code, sampled, part in streams:
        signal = ctx.concept(code, "Measurement")
        origin = sampled.get("origin") or {}
        unit = ctx.unit(origin) if (origin.get("code") or origin.get("unit")) else None
        for (dim, k), values in sorted(_windows(sampled, f"Observation {resource.get('id')}").items()):
            window_part = ("window", k) if dim == 0 else ("window", dim, k)
            rows.append(Row("signal_window", {
                "signal_window_id": ctx.row_id("Observation", resource["id"], *part, *window_part),
                "person_id": person_id,
                "device_exposure_id": device_id,
                "signal_concept_id": signal.concept_id,
                "signal_source_value": (first_code(code) or "")[:255] or None,
                "window_start_datetime": start + dt.timedelta(seconds=k * fp.WEARABLE_WINDOW_SECONDS),
                "window_seconds": fp.WEARABLE_WINDOW_SECONDS,
                **_summary(values),
                "unit_concept_id": unit.concept_id if unit else None,
                "unit_source_value": (str(origin.get("code") or origin.get("unit") or ""))[:50] or None,
            }))
    return rows

