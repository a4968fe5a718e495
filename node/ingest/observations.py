"""FHIR R4 Observation and DiagnosticReport -> OMOP ``measurement`` / ``observation`` / ``episode``.

The single ``@mapper("Observation")`` lives here and dispatches by the Observation's code (and
shape) to the specialised mappers of :mod:`node.ingest.genomics` (Genomics Reporting IG variants,
ctDNA) and :mod:`node.ingest.imaging` (image features, biopsy locations, ``valueSampledData``
wearable streams), following the conventions of :mod:`node.fhir_profile`.  Everything else takes
the general path of the HL7 FHIR-to-OMOP IG (v1.0, "Observation" mapping):

* the target table is the **domain of the code**: ``ctx.concept(code).domain_id``; a code the node
  does not know is hinted ``Measurement`` when the category is laboratory / vital-signs / imaging or
  the value is a Quantity, else ``Observation`` (the IG's category rule);
* ``value[x]``: Quantity -> ``value_as_number`` + UCUM ``unit_concept_id`` (comparator ->
  ``operator_concept_id``), CodeableConcept -> ``value_as_concept_id``, string -> ``value_as_string``
  (observation) / ``value_source_value`` (measurement), boolean -> Yes/No concept and 1/0, integer ->
  number, Range -> ``range_low``/``range_high``, Ratio -> number;
* every ``component`` with a value is a row of its own (id part ``component``, index), the parent
  too when it carries a value itself (FHIR-to-OMOP IG: a panel without a value gives no row);
* ``measurement_type_concept_id`` / ``observation_type_concept_id`` 32817 "EHR";
* ``entered-in-error`` / ``cancelled`` results give no rows (an update to that status removes them).

mCODE "Cancer disease status" (LOINC 97509-4) becomes an ``episode`` under the disease episode of its
``focus`` Condition (``episode_parent_id = row_id("Condition", focus, "episode")``), coded with the
RADFED disease-dynamics concepts ``progression`` / ``stable_disease`` / ``response``
(``cdm/data/radfed_concepts.csv``; OMOP's Episode vocabulary has no per-assessment concepts) and
``episode_object_concept_id`` = the status value concept.

A DiagnosticReport (Genomics Reporting IG "Genomics Report", or any report) gives no row of its own:
its ``result`` Observations are resources loaded on their own.  Observations *contained* in the
report are mapped here (row ids from ``"<report id>#<contained id>"``), and each ``conclusionCode``
becomes an ``observation`` row (concept = the report code, value = the conclusion code).

Mappers are pure: everything from the node comes through ``ctx``; code lookups are module-level
frozensets/dicts so a resource costs a few dict hits.
"""

from __future__ import annotations

import csv
import datetime as dt
from functools import cache
from importlib import resources as _resources

from node import fhir_profile as fp
from node.ingest.contract import Mapper, Row, Unmappable, mapper

EHR = 32817
#: OMOP "Meas Value Operator" concepts for Quantity.comparator.
OPERATORS = {"<": 4171756, "<=": 4171754, "=": 4172703, ">=": 4171755, ">": 4172704}
#: OMOP (SNOMED) Yes / No, for valueBoolean.
YES, NO = 4188539, 4188540
#: Observation categories the FHIR-to-OMOP IG files as measurements.
MEASUREMENT_CATEGORIES = frozenset({"laboratory", "vital-signs", "imaging", "procedure", "exam"})
SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled"})

# Unmappable reason codes (stable).
NO_DATE = "NO_DATE"
BAD_DATE = "BAD_DATE"
BAD_VALUE = "BAD_VALUE"
NO_CODE = "NO_CODE"


def _radfed_concepts() -> list[dict]:
    with _resources.files("cdm.data").joinpath("radfed_concepts.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


#: The RADFED project concepts (cdm/data/radfed_concepts.csv: fixed ids in the reserved range).
RADFED_CONCEPTS = _radfed_concepts()
#: RADFED concept code -> concept_id.
RADFED_IDS = {r["concept_code"]: int(r["concept_id"]) for r in RADFED_CONCEPTS}

#: mCODE disease status value (SNOMED) -> RADFED disease-dynamics concept.
DISEASE_STATUS_EPISODES = {
    (fp.SNOMED, fp.DISEASE_WORSENED): RADFED_IDS["progression"],
    (fp.SNOMED, fp.DISEASE_STABLE): RADFED_IDS["stable_disease"],
    (fp.SNOMED, fp.DISEASE_IMPROVED): RADFED_IDS["response"],
    (fp.RADFED, "progression"): RADFED_IDS["progression"],
    (fp.RADFED, "stable_disease"): RADFED_IDS["stable_disease"],
    (fp.RADFED, "response"): RADFED_IDS["response"],
}


# -- reading FHIR values ----------------------------------------------------------------------------

def codings(codeable: dict | None) -> list[dict]:
    return (codeable or {}).get("coding") or []


def code_keys(codeable: dict | None) -> list[tuple[str | None, str | None]]:
    """(system, code) of every coding, in order."""
    return [(c.get("system"), c.get("code")) for c in codings(codeable)]


def first_code(codeable: dict | None) -> str | None:
    for c in codings(codeable):
        if c.get("code"):
            return c["code"]
    return (codeable or {}).get("text")


def parse_instant(value: str | None) -> tuple[dt.date, dt.datetime | None] | None:
    """A FHIR date/dateTime/instant as (date, naive UTC datetime or None); partial dates take the 1st."""
    if not value:
        return None
    try:
        if len(value) <= 10:
            parts = value.split("-")
            day = dt.date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1)
            return day, None
        moment = dt.datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise Unmappable(BAD_DATE, f"{value!r} is not a FHIR date/dateTime") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.date(), moment


def effective(resource: dict) -> tuple[dt.date, dt.datetime | None]:
    """When an Observation/DiagnosticReport applies: effective[x] (period start), else ``issued``."""
    period = resource.get("effectivePeriod") or {}
    for value in (resource.get("effectiveDateTime"), resource.get("effectiveInstant"), period.get("start"),
                  period.get("end"), resource.get("issued")):
        found = parse_instant(value)
        if found is not None:
            return found
    raise Unmappable(NO_DATE, f"{resource.get('resourceType')} has no effective[x] or issued date")


def number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unmappable(BAD_VALUE, f"{what} {value!r} is not a number")
    return float(value)


def reference_id_part(reference: dict | None) -> str | None:
    """The id of a ``Type/id`` (or ``urn:uuid:x``) reference."""
    ref = (reference or {}).get("reference")
    if not ref:
        return None
    return ref.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def component_index(resource: dict) -> dict[tuple[str | None, str | None], dict]:
    """(system, code) -> the first component so coded."""
    out: dict = {}
    for comp in resource.get("component") or ():
        for key in code_keys(comp.get("code")):
            out.setdefault(key, comp)
    return out


def component_string(comp: dict | None) -> str | None:
    """A component's value as text: valueString, else the first code/text of valueCodeableConcept."""
    if comp is None:
        return None
    if comp.get("valueString") is not None:
        return comp["valueString"]
    return first_code(comp.get("valueCodeableConcept"))


# -- the general Observation path -------------------------------------------------------------------

def _target(code: dict | None, categories: set, item: dict, ctx):
    """(concept, table) of a code: the table is the concept's domain, else the category / value hint."""
    if not codings(code) and not (code or {}).get("text"):
        raise Unmappable(NO_CODE, "Observation.code has no coding")
    hint = "Measurement" if (categories & MEASUREMENT_CATEGORIES or "valueQuantity" in item) else "Observation"
    concept = ctx.concept(code, hint)
    return concept, "measurement" if (concept.domain_id or hint) == "Measurement" else "observation"


def _value_columns(item: dict, ctx, table: str) -> dict:
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


def _has_value(item: dict) -> bool:
    return any(k.startswith("value") for k in item)


def _row(table: str, row_id: int, person_id: int, concept, source: str | None, when, extra: dict,
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


def map_general(resource: dict, ctx) -> list[Row]:
    """measurement/observation rows of a plain Observation and its components (FHIR-to-OMOP IG)."""
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    when = effective(resource)
    categories = {c.get("code") for cat in resource.get("category") or () for c in codings(cat)}
    visit_id = ctx.reference_id((resource.get("encounter") or {}).get("reference"), "visit_occurrence")
    provider_id = _performer(resource, ctx)
    rid = resource.get("id")
    rows: list[Row] = []
    components = resource.get("component") or ()
    if _has_value(resource) or not components or "dataAbsentReason" in resource:
        concept, table = _target(resource.get("code"), categories, resource, ctx)
        extra = _value_columns(resource, ctx, table)
        if table == "measurement" and "range_low" not in extra:
            extra.update(_reference_range(resource))
        rows.append(_row(table, ctx.row_id("Observation", rid), person_id, concept, first_code(resource.get("code")),
                         when, extra, visit_id, provider_id))
    for i, comp in enumerate(components):
        if not _has_value(comp) or not codings(comp.get("code")):
            continue
        concept, table = _target(comp["code"], categories, comp, ctx)
        extra = _value_columns(comp, ctx, table)
        rows.append(_row(table, ctx.row_id("Observation", rid, "component", i), person_id, concept,
                         first_code(comp.get("code")), when, extra, visit_id, provider_id))
    return rows


# -- mCODE cancer disease status -> episode ----------------------------------------------------------

def map_disease_status(resource: dict, ctx) -> list[Row]:
    """mCODE Cancer Disease Status (LOINC 97509-4) -> ``episode`` under the Condition's disease episode.

    A status value outside worsened/stable/improved (e.g. "undetermined") is no disease dynamic:
    it is kept as a plain observation row instead.
    """
    value = resource.get("valueCodeableConcept")
    episode_concept = next((DISEASE_STATUS_EPISODES[k] for k in code_keys(value) if k in DISEASE_STATUS_EPISODES), None)
    if episode_concept is None:
        return map_general(resource, ctx)
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    day, moment = effective(resource)
    status = ctx.concept(value)
    focus = next((f for f in resource.get("focus") or () if (f.get("reference") or "").startswith("Condition/")
                  or (f.get("reference") or "").startswith("urn:uuid:")), None)
    focus_id = reference_id_part(focus)
    return [Row("episode", {
        "episode_id": ctx.row_id("Observation", resource["id"]),
        "person_id": person_id,
        "episode_concept_id": episode_concept,
        "episode_start_date": day,
        "episode_start_datetime": moment,
        "episode_parent_id": ctx.row_id("Condition", focus_id, "episode") if focus_id else None,
        "episode_object_concept_id": status.concept_id,
        "episode_type_concept_id": EHR,
        "episode_source_value": (first_code(value) or "")[:50] or None,
        "episode_source_concept_id": status.source_concept_id,
    })]


# -- dispatch -----------------------------------------------------------------------------------------

_SERIES_COMPONENT = (fp.DICOM_DCM, fp.SERIES_INSTANCE_UID)


@cache
def _by_code() -> dict[tuple[str, str], Mapper]:
    """Observation.code (system, code) -> its specialised mapper (built on first use: the modules import each other)."""
    return {
        (fp.LOINC, fp.VARIANT_ASSESSMENT): genomics.map_variant,
        (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION): genomics.map_ctdna,
        (fp.RADFED, fp.CTDNA_DETECTED): genomics.map_ctdna,
        (fp.LOINC, fp.CANCER_DISEASE_STATUS): map_disease_status,
        (fp.RADFED, fp.BIOPSY_LOCATION): imaging.map_biopsy_location,
        **{key: imaging.map_image_feature for key in imaging.IMAGE_FEATURE_CODES},
    }


def _mapper_of(resource: dict) -> Mapper:
    """Genomic, ctDNA, disease-status, biopsy codes first; then sampled data, image features, the rest."""
    by_code = _by_code()
    keys = code_keys(resource.get("code"))
    found = [by_code[k] for k in keys if k in by_code]
    if found and found[0] is not imaging.map_image_feature:
        return found[0]
    if "valueSampledData" in resource:
        return imaging.map_sampled_data
    if found or any(_SERIES_COMPONENT in code_keys(c.get("code")) for c in resource.get("component") or ()):
        return imaging.map_image_feature
    return map_general


@mapper("Observation")
def map_observation(resource: dict, ctx) -> list[Row]:
    """Any Observation: dispatched by code to the genomic, imaging, wearable or general mapping."""
    if resource.get("status") in SKIPPED_STATUSES:
        return []
    return _mapper_of(resource)(resource, ctx)


@mapper("DiagnosticReport")
def map_diagnostic_report(resource: dict, ctx) -> list[Row]:
    """Contained result Observations, and an ``observation`` row per ``conclusionCode``."""
    if resource.get("status") in SKIPPED_STATUSES:
        return []
    rows: list[Row] = []
    contained = resource.get("contained") or ()
    rid = resource.get("id")
    for inner in contained:
        if inner.get("resourceType") != "Observation":
            continue
        # A contained resource's id is local to its container: qualify it so row ids stay unique.
        local = {**inner, "id": f"{rid}#{inner.get('id')}", "contained": contained}
        for key in ("subject", "effectiveDateTime", "effectivePeriod", "issued", "specimen", "encounter"):
            if key not in local and key in resource:
                local[key] = resource[key] if key != "specimen" else resource[key][0]
        rows.extend(map_observation(local, ctx))
    conclusions = resource.get("conclusionCode") or ()
    if conclusions:
        person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
        when = effective(resource)
        report = ctx.concept(resource.get("code"), "Observation")
        visit_id = ctx.reference_id((resource.get("encounter") or {}).get("reference"), "visit_occurrence")
        for i, conclusion in enumerate(conclusions):
            value = ctx.concept(conclusion)
            rows.append(_row("observation", ctx.row_id("DiagnosticReport", rid, "conclusion", i), person_id, report,
                             first_code(resource.get("code")), when,
                             {"value_as_concept_id": value.concept_id,
                              "value_source_value": (first_code(conclusion) or "")[:50] or None,
                              "value_as_string": (resource.get("conclusion") or "")[:60] or None},
                             visit_id, None))
    return rows


# The specialised mappers use the helpers above; imported last so either module may be imported first.
from node.ingest import genomics, imaging  # noqa: E402
