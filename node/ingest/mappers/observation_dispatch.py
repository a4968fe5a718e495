"""Which mapper an Observation goes to: by its code first, then by its shape.

One FHIR resource type, many CDM tables (conventions of :mod:`node.fhir_profile`):

=====================================================  ==========================  =========================
Observation                                            mapper                      CDM rows
=====================================================  ==========================  =========================
LOINC 69548-6 genetic variant assessment               :mod:`.variant`             variant_occurrence
RADFED ctdna_tumour_fraction / ctdna_detected          :mod:`.ctdna`               measurement + ctdna_result
LOINC 97509-4 cancer disease status (mCODE)            :mod:`.disease_status`      episode
RADFED biopsy_location                                 :mod:`.biopsy_location`     biopsy_location
``valueSampledData`` (wearables)                       :mod:`.sampled_data`        signal_window
RADFED image feature, or a DCM 112002 series component :mod:`.image_feature`       image_feature
anything else (labs, vitals, survey, social history)   :mod:`.observation`         measurement / observation
=====================================================  ==========================  =========================

``entered-in-error`` / ``cancelled`` results give no rows (an update to that status removes them).
"""

from __future__ import annotations

from node import fhir_profile as fp
from node.ingest.contract import Mapper, Row
from node.ingest.mappers.biopsy_location import map_biopsy_location
from node.ingest.mappers.ctdna import map_ctdna
from node.ingest.mappers.disease_status import map_disease_status
from node.ingest.mappers.image_feature import IMAGE_FEATURE_CODES, SERIES_UID, map_image_feature
from node.ingest.mappers.observation import map_general
from node.ingest.mappers.sampled_data import map_sampled_data
from node.ingest.mappers.values import code_keys
from node.ingest.mappers.variant import map_variant

SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled"})

#: Observation.code (system, code) -> its specialised mapper.
BY_CODE: dict[tuple[str, str], Mapper] = {
    (fp.LOINC, fp.VARIANT_ASSESSMENT): map_variant,
    (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION): map_ctdna,
    (fp.RADFED, fp.CTDNA_DETECTED): map_ctdna,
    (fp.LOINC, fp.CANCER_DISEASE_STATUS): map_disease_status,
    (fp.RADFED, fp.BIOPSY_LOCATION): map_biopsy_location,
    **{key: map_image_feature for key in IMAGE_FEATURE_CODES},
}


def mapper_of(resource: dict) -> Mapper:
    """Genomic, ctDNA, disease-status, biopsy codes first; then sampled data, image features, the rest."""
    found = [BY_CODE[k] for k in code_keys(resource.get("code")) if k in BY_CODE]
    if found and found[0] is not map_image_feature:
        return found[0]
    if "valueSampledData" in resource:
        return map_sampled_data
    if found or any(SERIES_UID in code_keys(c.get("code")) for c in resource.get("component") or ()):
        return map_image_feature
    return map_general


def map_observation(resource: dict, ctx) -> list[Row]:
    """Any Observation: dispatched by code to the genomic, imaging, wearable or general mapping."""
    if resource.get("status") in SKIPPED_STATUSES:
        return []
    return mapper_of(resource)(resource, ctx)
