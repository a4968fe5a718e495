"""FHIR Patient -> OMOP ``person`` (+ the ``location`` of the home address, + ``death`` from deceased[x]).

HL7 FHIR-to-OMOP IG (v1.0) "Patient" mapping: gender -> Gender concept, US Core race / ethnicity
extensions (OMB categories) -> Race / Ethnicity concepts, the MRN (the identifier of the site's
``[fhir] mrn_system``) -> ``person_source_value`` (the DICOM ingest matches PatientID against it).
"""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.administrative import gender_concept, location_row, preferred_address
from node.ingest.mappers.values import EHR, clip, parse_datetime, reference, required_datetime

# US Core race / ethnicity extensions (OMB categories) -> OMOP Race / Ethnicity concepts.
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
RACE = {"2106-3": 8527, "2054-5": 8516, "2028-9": 8515}
ETHNICITY = {"2135-2": 38003563, "2186-5": 38003564}


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
