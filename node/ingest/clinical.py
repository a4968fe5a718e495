"""Patient, Encounter, Condition, Procedure, Specimen, Device and AllergyIntolerance -> OMOP rows.

Each mapper follows the HL7 FHIR-to-OMOP IG (v1.0) and :mod:`node.fhir_profile`: ids are
``ctx.row_id(type, id[, part])``, dates are local (:mod:`node.ingest.values`), the type concept of
every event is 32817 "EHR", and source codes always survive in ``*_source_value`` /
``*_source_concept_id``.  A resource whose subject is not a loaded Patient raises
``Unmappable("UNKNOWN_PATIENT")`` through ``ctx.person_id`` and is quarantined by the engine.
"""

from __future__ import annotations

import datetime as dt

from node.ingest.administrative import gender_concept, location_row, preferred_address
from node.ingest.contract import MapContext, Row, mapper
from node.ingest.values import clip, first_datetime, parse_datetime, period, reference, required_datetime, source_value

EHR = 32817
DISEASE_EPISODE = 32533  # OMOP Episode vocabulary "Disease Episode"
CONDITION_OCCURRENCE_ID_FIELD = 1147127  # CDM field concept condition_occurrence.condition_occurrence_id
#: v3-ActCode encounter class -> OMOP Visit concept (FHIR-to-OMOP IG Encounter mapping).
VISIT_CLASS = {"AMB": 9202, "IMP": 9201, "ACUTE": 9201, "NONAC": 9201, "EMER": 9203, "OBSENC": 9202}
# US Core race / ethnicity extensions (OMB categories) -> OMOP Race / Ethnicity concepts.
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
RACE = {"2106-3": 8527, "2054-5": 8516, "2028-9": 8515}
ETHNICITY = {"2135-2": 38003563, "2186-5": 38003564}
# Condition status (OMOP "Condition Status" vocabulary).
CONFIRMED_DIAGNOSIS, PRELIMINARY_DIAGNOSIS, RESOLVED_CONDITION = 32893, 32899, 32906
#: Code systems whose Condition codes are tumours: ICD-O-3 morphology and the RADFED tumour groups.
TUMOUR_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/icd-o-3", "https://radfed.org/fhir/CodeSystem/radfed")


def _omb(resource: dict, url: str) -> str | None:
    for extension in resource.get("extension") or ():
        if extension.get("url") == url:
            for part in extension.get("extension") or ():
                if part.get("url") == "ombCategory" and part.get("valueCoding"):
                    return part["valueCoding"].get("code")
    return None


def _mrn(resource: dict, mrn_system: str) -> str:
    for identifier in resource.get("identifier") or ():
        if identifier.get("system") == mrn_system and identifier.get("value"):
            return identifier["value"]
    return resource["id"]


@mapper("Patient")
def map_patient(resource: dict, ctx: MapContext) -> list[Row]:
    """person (+ location of the home address, + death from deceased[x])."""
    person_id = ctx.row_id("Patient", resource["id"])
    birth_date, _ = required_datetime(resource, resource.get("birthDate"), what="birthDate")
    rows = []
    location_id = None
    address = preferred_address(resource.get("address"))
    if address:
        location_id = ctx.row_id("Patient", resource["id"], "location")
        rows.append(location_row(location_id, address))
    race, ethnicity = _omb(resource, US_CORE_RACE), _omb(resource, US_CORE_ETHNICITY)
    providers = resource.get("generalPractitioner") or [{}]
    rows.insert(0, Row("person", {
        "person_id": person_id,
        "gender_concept_id": gender_concept(resource.get("gender")),
        "year_of_birth": birth_date.year,
        "month_of_birth": birth_date.month if len(resource["birthDate"]) >= 7 else None,
        "day_of_birth": birth_date.day if len(resource["birthDate"]) >= 10 else None,
        "race_concept_id": RACE.get(race or "", 0),
        "ethnicity_concept_id": ETHNICITY.get(ethnicity or "", 0),
        "location_id": location_id,
        "provider_id": ctx.reference_id(reference(providers[0]), "provider"),
        "care_site_id": ctx.reference_id(reference(resource.get("managingOrganization")), "care_site"),
        "person_source_value": clip(_mrn(resource, ctx.mrn_system), 50),
        "gender_source_value": clip(resource.get("gender"), 50),
        "race_source_value": clip(race, 50),
        "ethnicity_source_value": clip(ethnicity, 50),
    }))
    # deceasedBoolean without a date: OMOP's death_date is required; the last update is the best bound.
    died = parse_datetime(resource.get("deceasedDateTime"))
    if died is None and resource.get("deceasedBoolean") is True:
        died = parse_datetime((resource.get("meta") or {}).get("lastUpdated"))
    if died is not None:
        rows.append(Row("death", {"person_id": person_id, "death_date": died[0], "death_datetime": died[1],
                                  "death_type_concept_id": EHR}))
    return rows


@mapper("Encounter")
def map_encounter(resource: dict, ctx: MapContext) -> list[Row]:
    """visit_occurrence; an Encounter that is ``partOf`` a loaded one is a visit_detail of its visit."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    start, end = period(resource.get("period"))
    start_date, start_time = required_datetime(resource, start, what="period.start")
    end_date, end_time = first_datetime(end) or (start_date, start_time)
    klass = (resource.get("class") or {}).get("code")
    concept = VISIT_CLASS.get(klass or "", 0)
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
            "visit_detail_source_value": clip(klass, 50), "visit_occurrence_id": parent,
        })]
    return [Row("visit_occurrence", {
        "visit_occurrence_id": own_id, "person_id": person_id, "visit_concept_id": concept,
        "visit_start_date": start_date, "visit_start_datetime": start_time,
        "visit_end_date": end_date, "visit_end_datetime": end_time, "visit_type_concept_id": EHR,
        "provider_id": provider_id, "care_site_id": care_site_id, "visit_source_value": clip(klass, 50),
    })]


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


@mapper("Condition")
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


@mapper("Procedure")
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


@mapper("Specimen")
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


@mapper("Device")
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


@mapper("AllergyIntolerance")
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
