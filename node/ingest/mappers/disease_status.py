"""mCODE "Cancer disease status" Observation (LOINC 97509-4) -> OMOP ``episode``.

The status becomes an ``episode`` under the disease episode of its ``focus`` Condition
(``episode_parent_id = row_id("Condition", focus, "episode")``, written by :mod:`.condition`),
coded, as the OHDSI Oncology extension's Disease Dynamic episodes are, with the Episode vocabulary's
concept (:mod:`cdm.conformance`): worsened -> Progression 32949, stable -> Stable Disease 32948, full /
partial remission -> Complete / Partial Remission 32946 / 32947.  "Improved" is no remission and the
Episode vocabulary has no concept for it: it keeps RADFED's ``response``.  ``episode_object_concept_id``
is the status value concept.  Specs name the dynamics ``RADFED:progression`` / ``stable_disease`` /
``response`` either way (the compiler matches the standard concepts too).
"""

from __future__ import annotations

from cdm.conformance import COMPLETE_REMISSION, PARTIAL_REMISSION, PROGRESSION, STABLE_DISEASE
from node import fhir_profile as fp
from node.ingest.contract import Row
from node.ingest.mappers.observation import map_general
from node.ingest.mappers.values import EHR, RADFED_IDS, code_keys, effective, first_code, reference, reference_id_part

#: mCODE disease status value (SNOMED, or RADFED's own codes) -> the episode's Disease Dynamic concept.
DISEASE_STATUS_EPISODES = {
    (fp.SNOMED, fp.DISEASE_WORSENED): PROGRESSION,
    (fp.SNOMED, fp.DISEASE_STABLE): STABLE_DISEASE,
    (fp.SNOMED, fp.DISEASE_FULL_REMISSION): COMPLETE_REMISSION,
    (fp.SNOMED, fp.DISEASE_PARTIAL_REMISSION): PARTIAL_REMISSION,
    (fp.SNOMED, fp.DISEASE_IMPROVED): RADFED_IDS["response"],
    (fp.RADFED, "progression"): PROGRESSION,
    (fp.RADFED, "stable_disease"): STABLE_DISEASE,
    (fp.RADFED, "response"): RADFED_IDS["response"],
}


def map_disease_status(resource: dict, ctx) -> list[Row]:
    """mCODE Cancer Disease Status (LOINC 97509-4) -> ``episode`` under the Condition's disease episode.

    A status value outside worsened/stable/improved (e.g. "undetermined") is no disease dynamic:
    it is kept as a plain observation row instead.
    """
    value = resource.get("valueCodeableConcept")
    episode_concept = next((DISEASE_STATUS_EPISODES[k] for k in code_keys(value) if k in DISEASE_STATUS_EPISODES), None)
    if episode_concept is None:
        return map_general(resource, ctx)
    person_id = ctx.person_id(reference(resource.get("subject")))
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
