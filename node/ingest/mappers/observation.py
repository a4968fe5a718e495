"""FHIR R4 Observation -> OMOP ``measurement`` / ``observation`` rows: the general path.

Where an Observation becomes a measurement row.  (Which Observations take this path and which a
specialised mapper — genomic variants, ctDNA, image features, biopsy locations, wearable streams,
disease status — is decided by :mod:`.observation_dispatch`.)  HL7 FHIR-to-OMOP IG (v1.0,
"Observation" mapping):

* the target table is the **domain of the code**: ``ctx.concept(code).domain_id``; a code the node
  does not know is hinted ``Measurement`` when the category is laboratory / vital-signs / imaging or
  the value is a Quantity, else ``Observation`` (the IG's category rule);
* ``value[x]``: Quantity -> ``value_as_number`` + UCUM ``unit_concept_id`` (comparator ->
  ``operator_concept_id``), CodeableConcept -> ``value_as_concept_id``, string -> ``value_as_string``
  (observation) / ``value_source_value`` (measurement), boolean -> Yes/No concept and 1/0, integer ->
  number, Range -> ``range_low``/``range_high``, Ratio -> number;
* every ``component`` with a value is a row of its own (id part ``component``, index), the parent
  too when it carries a value itself (FHIR-to-OMOP IG: a panel without a value gives no row);
* ``measurement_type_concept_id`` / ``observation_type_concept_id`` 32817 "EHR".

Mappers are pure: everything from the node comes through ``ctx``.
"""

from __future__ import annotations

from cdm.conformance import CONDITION_OCCURRENCE_ID_FIELD

from node.ingest.contract import Row, Unmappable
from node.ingest.mappers.values import (
    EHR, NO_CODE, codings, effective, first_code, number, reference,
)

#: OMOP "Meas Value Operator" concepts for Quantity.comparator.
OPERATORS = {"<": 4171756, "<=": 4171754, "=": 4172703, ">=": 4171755, ">": 4172704}
#: OMOP (SNOMED) Yes / No, for valueBoolean.
YES, NO = 4188539, 4188540
#: Observation categories the FHIR-to-OMOP IG files as measurements.
MEASUREMENT_CATEGORIES = frozenset({"laboratory", "vital-signs", "imaging", "procedure", "exam"})


def target(code: dict | None, categories: set, item: dict, ctx):
    """(concept, table) of a code: the table is the concept's domain, else the category / value hint."""
    if not codings(code) and not (code or {}).get("text"):
        raise Unmappable(NO_CODE, "Observation.code has no coding")
    hint = "Measurement" if (categories & MEASUREMENT_CATEGORIES or "valueQuantity" in item) else "Observation"
    concept = ctx.concept(code, hint)
    return concept, "measurement" if (concept.domain_id or hint) == "Measurement" else "observation"


def value_columns(item: dict, ctx, table: str) -> dict:
    """The value[x] of an Observation or component as columns of ``table``."""
    out: dict = {}
    if (q := item.get("valueQuantity")) is not None:
        if q.get("value") is not None:
            out["value_as_number"] = number(q["value"], "valueQuantity.value")
        unit = q.get("code") or q.get("unit")
        out["unit_concept_id"] = ctx.unit(q).concept_id
        out["unit_source_value"] = str(unit)[:50] if unit else None
        if table == "measurement" and q.get("comparator") in OPERATORS:
            out["operator_concept_id"] = OPERATORS[q["comparator"]]
    elif (cc := item.get("valueCodeableConcept")) is not None:
        out["value_as_concept_id"] = ctx.concept(cc).concept_id
        out["value_source_value"] = (first_code(cc) or "")[:50] or None
    elif (s := item.get("valueString")) is not None:
        out["value_as_string" if table == "observation" else "value_source_value"] = str(s)[:60 if table == "observation" else 50]
    elif (b := item.get("valueBoolean")) is not None:
        out.update(value_as_number=1.0 if b else 0.0, value_as_concept_id=YES if b else NO,
                   value_source_value="true" if b else "false")
    elif (i := item.get("valueInteger")) is not None:
        out["value_as_number"] = number(i, "valueInteger")
    elif (r := item.get("valueRange")) is not None:
        low, high = (r.get("low") or {}).get("value"), (r.get("high") or {}).get("value")
        unit_q = r.get("low") or r.get("high") or {}
        if table == "measurement":
            out.update(range_low=None if low is None else number(low, "valueRange.low"),
                       range_high=None if high is None else number(high, "valueRange.high"))
        else:
            out["value_as_string"] = f"{'' if low is None else low}-{'' if high is None else high}"[:60]
        if unit_q.get("code") or unit_q.get("unit"):
            out["unit_concept_id"] = ctx.unit(unit_q).concept_id
            out["unit_source_value"] = str(unit_q.get("code") or unit_q.get("unit"))[:50]
    elif (ratio := item.get("valueRatio")) is not None:
        num, den = (ratio.get("numerator") or {}).get("value"), (ratio.get("denominator") or {}).get("value")
        if num is not None and den not in (None, 0):
            out["value_as_number"] = number(num, "valueRatio.numerator") / number(den, "valueRatio.denominator")
    else:
        for key in ("valueDateTime", "valueTime", "valuePeriod"):
            if item.get(key) is not None:
                text = item[key] if isinstance(item[key], str) else f"{item[key].get('start', '')}/{item[key].get('end', '')}"
                out["value_as_string" if table == "observation" else "value_source_value"] = text[:50]
                break
    return out


def has_value(item: dict) -> bool:
    for key in item:  # any(k.startswith("value") for k in item), without a generator per resource
        if key.startswith("value"):
            return True
    return False


def event_row(table: str, row_id: int, person_id: int, concept, source: str | None, when, extra: dict,
         visit_id, provider_id) -> Row:
    day, moment = when
    prefix = "measurement" if table == "measurement" else "observation"
    values = {
        f"{prefix}_id": row_id,
        "person_id": person_id,
        f"{prefix}_concept_id": concept.concept_id,
        f"{prefix}_date": day,
        f"{prefix}_datetime": moment,
        f"{prefix}_type_concept_id": EHR,
        f"{prefix}_source_value": (source or "")[:50] or None,
        f"{prefix}_source_concept_id": concept.source_concept_id,
        "visit_occurrence_id": visit_id,
        "provider_id": provider_id,
        **extra,
    }
    return Row(table, values)


def _reference_range(resource: dict) -> dict:
    ranges = resource.get("referenceRange") or ()
    if not ranges:
        return {}
    low, high = (ranges[0].get("low") or {}).get("value"), (ranges[0].get("high") or {}).get("value")
    return {"range_low": low if isinstance(low, (int, float)) else None,
            "range_high": high if isinstance(high, (int, float)) else None}


def _performer(resource: dict, ctx):
    for ref in resource.get("performer") or ():
        if (ref.get("reference") or "").startswith("Practitioner/"):
            return ctx.reference_id(ref["reference"], "provider")
    return None


def _focus_condition(resource: dict, ctx) -> int | None:
    """The condition_occurrence_id of a ``focus`` Condition (mCODE staging and grade Observations)."""
    for focus in resource.get("focus") or ():
        ref = reference(focus) or ""
        if ref.startswith("Condition/"):
            return ctx.row_id("Condition", ref.split("/", 1)[1])
        if ref.startswith("urn:uuid:"):  # a Bundle entry: a Condition only if one was loaded under it
            found = ctx.reference_id(ref, "condition_occurrence")
            if found is not None:
                return found
    return None


def _linked(row: Row, condition_id: int | None) -> Row:
    """OHDSI Oncology "Condition Modifier": a row about a condition points to it (field concept 1147127)."""
    if condition_id is not None:
        if row.table == "measurement":
            row.values.update(measurement_event_id=condition_id, meas_event_field_concept_id=CONDITION_OCCURRENCE_ID_FIELD)
        else:
            row.values.update(observation_event_id=condition_id, obs_event_field_concept_id=CONDITION_OCCURRENCE_ID_FIELD)
    return row


def map_general(resource: dict, ctx) -> list[Row]:
    """measurement/observation rows of a plain Observation and its components (FHIR-to-OMOP IG); an
    Observation whose ``focus`` is a Condition (a stage, a grade) is linked to it."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    when = effective(resource)
    categories = {c.get("code") for cat in resource.get("category") or () for c in codings(cat)}
    visit_id = ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence")
    provider_id = _performer(resource, ctx)
    rid = resource.get("id")
    condition_id = _focus_condition(resource, ctx)
    rows: list[Row] = []
    components = resource.get("component") or ()
    if has_value(resource) or not components or "dataAbsentReason" in resource:
        concept, table = target(resource.get("code"), categories, resource, ctx)
        extra = value_columns(resource, ctx, table)
        if table == "measurement" and "range_low" not in extra:
            extra.update(_reference_range(resource))
        rows.append(_linked(event_row(table, ctx.row_id("Observation", rid), person_id, concept,
                                      first_code(resource.get("code")), when, extra, visit_id, provider_id), condition_id))
    for i, comp in enumerate(components):
        if not has_value(comp) or not codings(comp.get("code")):
            continue
        concept, table = target(comp["code"], categories, comp, ctx)
        extra = value_columns(comp, ctx, table)
        rows.append(_linked(event_row(table, ctx.row_id("Observation", rid, "component", i), person_id, concept,
                                      first_code(comp.get("code")), when, extra, visit_id, provider_id), condition_id))
    return rows
