"""MedicationRequest / MedicationStatement / MedicationAdministration / Immunization -> drug_exposure.

HL7 FHIR-to-OMOP IG (v1.0) medication mappings: the drug is ``medicationCodeableConcept`` or the
code of the Medication that ``medicationReference`` names when it is contained (``#id``); a
reference to a stand-alone Medication keeps the reference as ``drug_source_value`` with concept 0.
Dates: authoredOn / dispenseRequest.validityPeriod (request), effective[x] (statement,
administration), occurrenceDateTime (immunization); OMOP's required end date defaults to the
start.  Type concepts: 32838 "EHR prescription", 32818 "EHR administration record", 32817 "EHR".
Immunization follows the IG too: vaccineCode (CVX, http://hl7.org/fhir/sid/cvx) is the drug.
"""

from __future__ import annotations

from node.ingest.contract import MapContext, Row
from node.ingest.mappers.values import EHR, clip, first_datetime, period, reference, required_datetime, source_value

EHR_PRESCRIPTION, EHR_ADMINISTRATION = 32838, 32818
#: Statuses that record something that did not happen: no exposure (an update removes the old one).
NOT_GIVEN = {"entered-in-error", "not-done", "not-taken", "cancelled"}


def _drug(resource: dict, ctx: MapContext):
    """(concept match, source value) of the medication[x] of a resource."""
    codeable = resource.get("medicationCodeableConcept")
    if codeable is None:
        ref = reference(resource.get("medicationReference")) or ""
        if ref.startswith("#"):
            contained = next((c for c in resource.get("contained") or ()
                              if c.get("resourceType") == "Medication" and c.get("id") == ref[1:]), None)
            codeable = (contained or {}).get("code")
        if codeable is None:
            return ctx.concept(None, "Drug"), clip(ref, 50)
    return ctx.concept(codeable, "Drug"), source_value(codeable)


def _row(resource: dict, ctx: MapContext, person_ref: str | None, start, end, type_concept: int,
         *, drug=None, quantity=None, route: dict | None = None, extra: dict | None = None) -> list[Row]:
    person_id = ctx.person_id(person_ref)
    concept, drug_source = drug if drug is not None else _drug(resource, ctx)
    start_date, start_time = start
    end_date, end_time = end or (start_date, start_time)
    route_concept = ctx.concept(route, "Route") if route else None
    return [Row("drug_exposure", {
        "drug_exposure_id": ctx.row_id(resource["resourceType"], resource["id"]), "person_id": person_id,
        "drug_concept_id": concept.concept_id, "drug_exposure_start_date": start_date,
        "drug_exposure_start_datetime": start_time, "drug_exposure_end_date": max(end_date, start_date),
        "drug_exposure_end_datetime": end_time, "drug_type_concept_id": type_concept, "quantity": quantity,
        "route_concept_id": route_concept.concept_id if route_concept else None,
        "route_source_value": source_value(route),
        "drug_source_value": drug_source, "drug_source_concept_id": concept.source_concept_id,
        **(extra or {}),
    })]


def _dose(dosages: list[dict] | None) -> tuple[float | None, dict | None, str | None]:
    """(dose value, route, text) of the first Dosage."""
    dosage = (dosages or [{}])[0]
    dose = next((d.get("doseQuantity") for d in dosage.get("doseAndRate") or () if d.get("doseQuantity")), None)
    return (dose or {}).get("value"), dosage.get("route"), dosage.get("text")


def _effective(resource: dict, *fallback: str | None, what: str):
    """(start, end or None) of effective[x] (dateTime or Period), the start falling back to ``fallback``."""
    start_text, end_text = period(resource.get("effectivePeriod"))
    start = required_datetime(resource, resource.get("effectiveDateTime"), start_text, *fallback, what=what)
    return start, first_datetime(end_text)


def map_medication_request(resource: dict, ctx: MapContext) -> list[Row]:
    if resource.get("status") in NOT_GIVEN:
        return []
    dispense = resource.get("dispenseRequest") or {}
    valid_start, valid_end = period(dispense.get("validityPeriod"))
    start = required_datetime(resource, resource.get("authoredOn"), valid_start, what="authoredOn or validityPeriod")
    supply = dispense.get("expectedSupplyDuration") or {}
    days = int(supply["value"]) if supply.get("value") is not None and supply.get("code", "d") == "d" else None
    dose, route, sig = _dose(resource.get("dosageInstruction"))
    quantity = (dispense.get("quantity") or {}).get("value", dose)
    refills = dispense.get("numberOfRepeatsAllowed")
    requester = ctx.reference_id(reference(resource.get("requester")), "provider")
    return _row(resource, ctx, reference(resource.get("subject")), start, first_datetime(valid_end),
                EHR_PRESCRIPTION, quantity=quantity, route=route, extra={
                    "days_supply": days, "refills": refills, "sig": sig, "provider_id": requester,
                    "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence")})


def map_medication_statement(resource: dict, ctx: MapContext) -> list[Row]:
    if resource.get("status") in NOT_GIVEN:
        return []
    start, end = _effective(resource, resource.get("dateAsserted"), what="effective[x] or dateAsserted")
    dose, route, sig = _dose(resource.get("dosage"))
    return _row(resource, ctx, reference(resource.get("subject")), start, end, EHR,
                quantity=dose, route=route, extra={
                    "sig": sig,
                    "visit_occurrence_id": ctx.reference_id(reference(resource.get("context")), "visit_occurrence")})


def map_medication_administration(resource: dict, ctx: MapContext) -> list[Row]:
    if resource.get("status") in NOT_GIVEN:
        return []
    start, end = _effective(resource, what="effective[x]")
    dosage = resource.get("dosage") or {}
    performer = next((p.get("actor") for p in resource.get("performer") or () if p.get("actor")), None)
    return _row(resource, ctx, reference(resource.get("subject")), start, end, EHR_ADMINISTRATION,
                quantity=(dosage.get("dose") or {}).get("value"), route=dosage.get("route"),
                extra={"sig": dosage.get("text"),
                       "provider_id": ctx.reference_id(reference(performer), "provider"),
                       "visit_occurrence_id": ctx.reference_id(reference(resource.get("context")),
                                                               "visit_occurrence")})


def map_immunization(resource: dict, ctx: MapContext) -> list[Row]:
    if resource.get("status") in NOT_GIVEN:
        return []
    start = required_datetime(resource, resource.get("occurrenceDateTime"), resource.get("recorded"),
                              what="occurrenceDateTime or recorded")
    vaccine = resource.get("vaccineCode")
    performer = next((p.get("actor") for p in resource.get("performer") or () if p.get("actor")), None)
    return _row(resource, ctx, reference(resource.get("patient")), start, None, EHR,
                drug=(ctx.concept(vaccine, "Drug"), source_value(vaccine)),
                quantity=(resource.get("doseQuantity") or {}).get("value"), route=resource.get("route"), extra={
                    "lot_number": clip(resource.get("lotNumber"), 50),
                    "provider_id": ctx.reference_id(reference(performer), "provider"),
                    "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence")})
