"""FHIR Condition -> OMOP ``condition_occurrence`` (+ a Disease ``episode`` for tumours, linked by ``episode_event``).

HL7 FHIR-to-OMOP IG (v1.0) "Condition" mapping: onset (else recordedDate) starts the condition,
abatement ends it; clinical / verification status -> OMOP "Condition Status" concepts.  A staged
Condition, or one coded in a tumour code system (ICD-O-3, the RADFED tumour groups), also opens the
disease episode that mCODE disease-status assessments (:mod:`.disease_status`) hang under.  Its
stages are measurement rows linked to it, the OHDSI Oncology extension's Condition Modifiers.
"""

from __future__ import annotations

from cdm.conformance import CONDITION_OCCURRENCE_ID_FIELD, condition_modifier

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, first_datetime, reference, required_datetime, source_value

DISEASE_EPISODE = 32533  # OMOP Episode vocabulary "Disease Episode"
# Condition status (OMOP "Condition Status" vocabulary).
CONFIRMED_DIAGNOSIS, PRELIMINARY_DIAGNOSIS, RESOLVED_CONDITION = 32893, 32899, 32906
#: Code systems whose Condition codes are tumours: ICD-O-3 morphology and the RADFED tumour groups.
TUMOUR_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/icd-o-3", "https://radfed.org/fhir/CodeSystem/radfed")


def _status(resource: dict) -> tuple[int, str | None]:
    clinical = source_value(resource.get("clinicalStatus"))
    verification = source_value(resource.get("verificationStatus"))
    if clinical in ("resolved", "inactive", "remission"):
        concept = RESOLVED_CONDITION
    elif verification == "confirmed":
        concept = CONFIRMED_DIAGNOSIS
    elif verification in ("provisional", "differential", "unconfirmed"):
        concept = PRELIMINARY_DIAGNOSIS
    else:
        concept = 0
    text = "/".join(v for v in (clinical, verification) if v) or None
    return concept, text


def is_tumour(resource: dict) -> bool:
    """A Condition that gets a disease episode: it is staged, or coded in a tumour code system."""
    codings = (resource.get("code") or {}).get("coding") or ()
    return bool(resource.get("stage")) or any(c.get("system") in TUMOUR_SYSTEMS for c in codings)


def _stage_modifiers(resource: dict, ctx: MapContext, person_id: int, condition_id: int, day, moment) -> list[Row]:
    """OHDSI Oncology "Condition Modifiers": each ``stage.summary`` (e.g. an AJCC stage group) is a
    MEASUREMENT row linked to the condition (``measurement_event_id`` + field concept 1147127), the
    concept being the stage itself (a Cancer Modifier concept where the vocabulary maps it)."""
    rows = []
    for i, stage in enumerate(resource.get("stage") or ()):
        summary = stage.get("summary")
        if not (summary or {}).get("coding"):
            continue
        concept = ctx.concept(summary, "Measurement")
        rows.append(Row("measurement", {
            **condition_modifier(ctx.row_id("Condition", resource["id"], "stage", i), condition_id),
            "person_id": person_id, "measurement_concept_id": concept.concept_id,
            "measurement_date": day, "measurement_datetime": moment, "measurement_type_concept_id": EHR,
            "measurement_source_value": clip(source_value(summary), 50),
            "measurement_source_concept_id": concept.source_concept_id,
            "value_source_value": clip(source_value(stage.get("type")), 50),
        }))
    return rows


def map_condition(resource: dict, ctx: MapContext) -> list[Row]:
    """condition_occurrence (+ a Disease Episode for tumours, linked by episode_event)."""
    if source_value(resource.get("verificationStatus")) == "entered-in-error":
        return []
    person_id = ctx.person_id(reference(resource.get("subject")))
    onset = resource.get("onsetPeriod") or {}
    abatement = resource.get("abatementPeriod") or {}
    start_date, start_time = required_datetime(resource, resource.get("onsetDateTime"), onset.get("start"),
                                               resource.get("recordedDate"), what="onset or recordedDate")
    end = first_datetime(resource.get("abatementDateTime"), abatement.get("end"))
    concept = ctx.concept(resource.get("code"), "Condition")
    status, status_text = _status(resource)
    condition_id = ctx.row_id("Condition", resource["id"])
    code_value = source_value(resource.get("code"))
    rows = [Row("condition_occurrence", {
        "condition_occurrence_id": condition_id, "person_id": person_id,
        "condition_concept_id": concept.concept_id, "condition_start_date": start_date,
        "condition_start_datetime": start_time, "condition_end_date": end[0] if end else None,
        "condition_end_datetime": end[1] if end else None, "condition_type_concept_id": EHR,
        "condition_status_concept_id": status,
        "provider_id": ctx.reference_id(reference(resource.get("asserter") or resource.get("recorder")), "provider"),
        "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"),
        "condition_source_value": code_value, "condition_source_concept_id": concept.source_concept_id,
        "condition_status_source_value": clip(status_text, 50),
    })]
    rows += _stage_modifiers(resource, ctx, person_id, condition_id, start_date, start_time)
    if is_tumour(resource):
        episode_id = ctx.row_id("Condition", resource["id"], "episode")
        rows.append(Row("episode", {
            "episode_id": episode_id, "person_id": person_id, "episode_concept_id": DISEASE_EPISODE,
            "episode_start_date": start_date, "episode_start_datetime": start_time,
            "episode_end_date": end[0] if end else None, "episode_end_datetime": end[1] if end else None,
            "episode_object_concept_id": concept.concept_id, "episode_type_concept_id": EHR,
            "episode_source_value": code_value, "episode_source_concept_id": concept.source_concept_id,
        }))
        rows.append(Row("episode_event", {"episode_id": episode_id, "event_id": condition_id,
                                          "episode_event_field_concept_id": CONDITION_OCCURRENCE_ID_FIELD}))
    return rows
