"""radfed's extension data, also written the way OHDSI tools read it.

ATLAS/Circe, Achilles, the Data Quality Dashboard and FeatureExtraction read MEASUREMENT, not
radfed's extension tables.  So every ingest path that writes an extension row also writes the
MEASUREMENT row the OHDSI working groups' designs put the same fact in, linked both ways; radfed's
own tables keep the detail its queries use (docs/omop-conformance.md has the column-by-column table):

* **image features** (Medical Imaging CDM, Park et al. 2024): the value is a MEASUREMENT row;
  ``image_feature.image_feature_event_field_concept_id`` names the MEASUREMENT table and
  ``image_feature_event_id`` is the ``measurement_id`` (:func:`feature_measurement`).
* **variants** (OMOP Genomic): a MEASUREMENT row per variant; ``variant_occurrence.measurement_id``
  points to it (built by the variant mapper with :func:`variant_measurement_concept`).
* **tumour stage and grade** (OHDSI Oncology extension, "Condition Modifiers"): MEASUREMENT rows with
  ``measurement_event_id`` = the ``condition_occurrence_id`` and ``meas_event_field_concept_id`` =
  :data:`CONDITION_OCCURRENCE_ID_FIELD`.

Concept ids, and where each was checked (no vocabulary download ships with radfed; a site's Athena
load brings the concepts themselves):

* 1147127 ``condition_occurrence.condition_occurrence_id`` (CDM vocabulary, Field): OMOP CDM
  specification, OMOP_CDMv6.0_Table_Level.csv (OBSERVATION), and the OHDSI Oncology WG conventions
  ("static for all condition modifiers").
* 1147330 the MEASUREMENT table (CDM vocabulary): the MI-CDM ETL guide's value for
  ``image_feature_event_field_concept_id``, as used by published MI-CDM loaders (which note it
  superseded 1147138, the ``measurement.measurement_id`` Field concept).
* 32817 "EHR" (Type Concept): in cdm/data/omop_core_concepts.csv.
"""

from __future__ import annotations

from cdm.ids import stable_id

MEASUREMENT_TABLE = 1147330
CONDITION_OCCURRENCE_ID_FIELD = 1147127
EHR = 32817
#: The OMOP vocabulary whose concepts name genomic variants (loaded with Athena where a site has it).
OMOP_GENOMIC = "OMOP Genomic"


def feature_measurement(feature: dict, day, moment=None, visit_occurrence_id=None) -> dict:
    """The MEASUREMENT row of an ``image_feature`` row (same concept, value and unit), and the MI-CDM
    link set on ``feature`` itself.  Its id is derived from the feature's, so a re-run replaces it."""
    measurement_id = stable_id("image-feature", "measurement", feature["image_feature_id"])
    feature["image_feature_event_field_concept_id"] = MEASUREMENT_TABLE
    feature["image_feature_event_id"] = measurement_id
    return {
        "measurement_id": measurement_id,
        "person_id": feature["person_id"],
        "measurement_concept_id": feature["image_feature_concept_id"],
        "measurement_date": day,
        "measurement_datetime": moment,
        "measurement_type_concept_id": EHR,
        "value_as_number": feature.get("value_as_number"),
        "value_as_concept_id": feature.get("value_as_concept_id"),
        "unit_concept_id": feature.get("unit_concept_id"),
        "visit_occurrence_id": visit_occurrence_id,
        "measurement_source_value": (feature.get("image_feature_source_value") or "")[:50] or None,
        "unit_source_value": (feature.get("unit_source_value") or "")[:50] or None,
    }


def variant_measurement_concept(known_concept, candidates) -> int | None:
    """The OMOP Genomic concept of a variant, looked up (never created) by its codes in the order
    given — ``NM_...:c.`` HGVS, protein HGVS, gene symbol — with ``known_concept(vocabulary, code)``;
    ``None`` when the node's vocabulary has none of them (no Athena OMOP Genomic load)."""
    for code in candidates:
        if code:
            concept_id = known_concept(OMOP_GENOMIC, str(code)[:50])
            if concept_id:
                return concept_id
    return None


def condition_modifier(measurement_id: int, condition_occurrence_id: int) -> dict:
    """The Oncology-extension link of a MEASUREMENT row that modifies a condition (stage, grade)."""
    return {"measurement_id": measurement_id, "measurement_event_id": condition_occurrence_id,
            "meas_event_field_concept_id": CONDITION_OCCURRENCE_ID_FIELD}

