"""Organization -> care_site, Location -> location, Practitioner -> provider (+ the Address helper).

HL7 FHIR-to-OMOP IG (v1.0, "Location / Organization / Practitioner" mappings): an Organization is a
``care_site`` (with the ``location`` of its first address), a Location a ``location`` (address and
``position``), a Practitioner a ``provider`` (NPI from the ``http://hl7.org/fhir/sid/us-npi``
identifier).  Their identifiers are also remembered by the engine, so the conditional references
Synthea writes (``Practitioner?identifier=...|NPI``) resolve to these rows.
"""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import clip, parse_datetime

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
GEOLOCATION = "http://hl7.org/fhir/StructureDefinition/geolocation"
#: AdministrativeGender -> OMOP Gender concept.
GENDER = {"male": 8507, "female": 8532}


def gender_concept(gender: str | None) -> int:
    return GENDER.get(gender or "", 0)


def _geolocation(address: dict) -> tuple[float | None, float | None]:
    for extension in address.get("extension") or ():
        if extension.get("url") == GEOLOCATION:
            values = {e.get("url"): e.get("valueDecimal") for e in extension.get("extension") or ()}
            return values.get("latitude"), values.get("longitude")
    return None, None


def location_row(location_id: int, address: dict, *, name: str | None = None,
                 latitude: float | None = None, longitude: float | None = None) -> Row:
    """A ``location`` row for a FHIR Address (R4 §2.24.0.12)."""
    lines = address.get("line") or []
    geo_lat, geo_lon = _geolocation(address)
    state = address.get("state")
    summary = ", ".join(p for p in (*lines, address.get("city"), state, address.get("postalCode")) if p)
    return Row("location", {
        "location_id": location_id,
        "address_1": clip(lines[0] if lines else None, 50),
        "address_2": clip(", ".join(lines[1:]) if len(lines) > 1 else None, 50),
        "city": clip(address.get("city"), 50),
        # OMOP's state is the 2-letter code; a spelt-out state stays in location_source_value.
        "state": state if state and len(state) <= 2 else None,
        "zip": clip(address.get("postalCode"), 9),
        "county": clip(address.get("district"), 20),
        "location_source_value": clip(name or summary, 50),
        "country_source_value": clip(address.get("country"), 80),
        "latitude": latitude if latitude is not None else geo_lat,
        "longitude": longitude if longitude is not None else geo_lon,
    })


def preferred_address(addresses: list[dict] | None) -> dict | None:
    """The home (else first current) address of a list."""
    addresses = [a for a in addresses or () if a.get("use") != "old"]
    return next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else None)


def human_name(names: list[dict] | None) -> str | None:
    """``given family`` of the official (else first) HumanName, or its text."""
    names = names or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if not name:
        return None
    return name.get("text") or " ".join([*(name.get("prefix") or ()), *(name.get("given") or ()),
                                         name.get("family") or ""]).strip() or None


def map_organization(resource: dict, ctx: MapContext) -> list[Row]:
    rows = []
    care_site_id = ctx.row_id("Organization", resource["id"])
    location_id = None
    address = preferred_address(resource.get("address"))
    if address:
        location_id = ctx.row_id("Organization", resource["id"], "location")
        rows.append(location_row(location_id, address))
    kind = (resource.get("type") or [None])[0]
    identifier = next((i.get("value") for i in resource.get("identifier") or () if i.get("value")), None)
    rows.insert(0, Row("care_site", {
        "care_site_id": care_site_id,
        "care_site_name": clip(resource.get("name"), 255),
        "location_id": location_id,
        "care_site_source_value": clip(identifier or resource["id"], 50),
        "place_of_service_source_value": clip(((kind or {}).get("coding") or [{}])[0].get("code"), 50),
    }))
    return rows


def map_location(resource: dict, ctx: MapContext) -> list[Row]:
    position = resource.get("position") or {}
    return [location_row(ctx.row_id("Location", resource["id"]), resource.get("address") or {},
                         name=resource.get("name"), latitude=position.get("latitude"),
                         longitude=position.get("longitude"))]


def map_practitioner(resource: dict, ctx: MapContext) -> list[Row]:
    npi = next((i.get("value") for i in resource.get("identifier") or () if i.get("system") == NPI_SYSTEM), None)
    birth = parse_datetime(resource.get("birthDate"))
    return [Row("provider", {
        "provider_id": ctx.row_id("Practitioner", resource["id"]),
        "provider_name": clip(human_name(resource.get("name")), 255),
        "npi": clip(npi, 20),
        "year_of_birth": birth[0].year if birth else None,
        "gender_concept_id": gender_concept(resource.get("gender")),
        "gender_source_value": clip(resource.get("gender"), 50),
        "provider_source_value": clip(resource["id"], 50),
    })]
