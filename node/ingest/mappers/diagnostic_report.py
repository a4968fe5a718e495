"""FHIR DiagnosticReport -> the rows of its contained results and an ``observation`` per conclusion code.

A DiagnosticReport (Genomics Reporting IG "Genomics Report", a radiology report...) gives no event
row of its own: its ``result`` Observations are resources loaded on their own, and its
``presentedForm`` (the report text) becomes ``note`` rows (:mod:`.note`).  Observations *contained* in the
report are mapped here like any Observation (:mod:`.observation_dispatch`; row ids from
``"<report id>#<contained id>"``), and each ``conclusionCode`` becomes an ``observation`` row
(concept = the report code, value = the conclusion code).
"""

from __future__ import annotations

from node.ingest.contract import Row
from node.ingest.mappers.note import presented_form_notes
from node.ingest.mappers.observation import event_row
from node.ingest.mappers.observation_dispatch import SKIPPED_STATUSES, map_observation
from node.ingest.mappers.values import effective, first_code, reference


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
        person_id = ctx.person_id(reference(resource.get("subject")))
        when = effective(resource)
        report = ctx.concept(resource.get("code"), "Observation")
        visit_id = ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence")
        for i, conclusion in enumerate(conclusions):
            value = ctx.concept(conclusion)
            rows.append(event_row("observation", ctx.row_id("DiagnosticReport", rid, "conclusion", i), person_id, report,
                             first_code(resource.get("code")), when,
                             {"value_as_concept_id": value.concept_id,
                              "value_source_value": (first_code(conclusion) or "")[:50] or None,
                              "value_as_string": (resource.get("conclusion") or "")[:60] or None},
                             visit_id, None))
    return rows + presented_form_notes(resource, ctx)
