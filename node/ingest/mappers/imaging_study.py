"""FHIR ImagingStudy -> ``image_occurrence`` (one row per series), merged with what DICOM wrote.

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

A study whose ImagingStudy names no ``procedureReference`` also gets the PROCEDURE_OCCURRENCE MI-CDM
requires (:func:`cdm.conformance.imaging_procedure`, same id as the DICOM ingest gives it).

So the columns only DICOM knows (``local_path``, ``manufacturer``, ``referenced_series_uid``) are
never written from FHIR, and the first writer's values win everywhere else.
"""

from __future__ import annotations

from cdm.conformance import imaging_procedure, imaging_procedure_id
from cdm.ids import stable_id
from node.dicom.body_parts import BODY_PART_SNOMED
from node.ingest.contract import Row, Unmappable
from node.ingest.mappers.values import MISSING_DATE, parse_datetime, reference

DICOM_UID_SYSTEM = "urn:dicom:uid"

MISSING_STUDY_UID = "MISSING_STUDY_UID"
MISSING_SERIES_UID = "MISSING_SERIES_UID"


def dicom_uid(value: str | None) -> str | None:
    """A DICOM UID as written in FHIR (``urn:oid:`` prefix dropped)."""
    if not value:
        return None
    return value[8:] if value.startswith("urn:oid:") else value


#: SNOMED code -> DICOM BodyPartExamined term, so both ingests write the same source value.
BODY_PART_TERMS = {code: term for term, (code, _) in BODY_PART_SNOMED.items()}


def map_imaging_study(resource: dict, ctx) -> list[Row]:
    """ImagingStudy -> one ``image_occurrence`` row per series (merged with DICOM as the module docstring says)."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    study_uid = next((dicom_uid(i.get("value")) for i in resource.get("identifier") or ()
                      if i.get("system") == DICOM_UID_SYSTEM and i.get("value")), None)
    if study_uid is None:
        raise Unmappable(MISSING_STUDY_UID, "ImagingStudy has no identifier with system urn:dicom:uid")
    study_start = parse_datetime(resource.get("started"))
    visit_id = ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence")
    procedure = (resource.get("procedureReference") or {}).get("reference")
    # A named Procedure not loaded yet stays NULL until it arrives (pending reference); a study that
    # names none is its own PROCEDURE_OCCURRENCE (MI-CDM: procedure_occurrence_id is NOT NULL).
    procedure_id = ctx.reference_id(procedure, "procedure_occurrence") if procedure else imaging_procedure_id(study_uid)
    rows = []
    for series in resource.get("series") or ():
        if not series.get("uid"):
            raise Unmappable(MISSING_SERIES_UID, f"ImagingStudy {resource.get('id')} has a series without its uid")
        when = parse_datetime(series.get("started")) or study_start
        if when is None:
            raise Unmappable(MISSING_DATE, f"ImagingStudy series {series.get('uid')} has no started date, nor has the study")
        modality = series.get("modality") or {}
        body = series.get("bodySite") or {}
        instances = series.get("instance") or ()
        count = series.get("numberOfInstances", len(instances) or None)
        sop_class = next((dicom_uid((i.get("sopClass") or {}).get("code")) for i in instances if i.get("sopClass")), None)
        rows.append(Row("image_occurrence", {
            "image_occurrence_id": stable_id("dicom-series", series["uid"]),
            "person_id": person_id,
            "procedure_occurrence_id": procedure_id,
            "visit_occurrence_id": visit_id,
            "anatomic_site_concept_id": ctx.concept({"coding": [body]}, "Spec Anatomic Site").concept_id if body else None,
            "anatomic_site_source_value": (BODY_PART_TERMS.get(body.get("code")) or body.get("code") or "")[:64] or None,
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
    if not procedure and rows:
        first = rows[0].values
        day, moment = study_start or (first["image_occurrence_date"], first["image_occurrence_datetime"])
        rows.append(Row("procedure_occurrence", imaging_procedure(
            study_uid, person_id, day, moment, visit_id, first["modality_concept_id"], first["modality_source_value"])))
    return rows
