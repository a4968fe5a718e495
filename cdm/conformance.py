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
* **imaging procedures** (MI-CDM): ``image_occurrence.procedure_occurrence_id`` is NOT NULL.  When
  the source names the imaging procedure (FHIR ``ImagingStudy.procedureReference``) that Procedure's
  row is linked; otherwise the study itself becomes a PROCEDURE_OCCURRENCE (:func:`imaging_procedure`,
  one per StudyInstanceUID, the same id from FHIR and from DICOM), as the published MI-CDM DICOM
  loader (data2evidence ``dicom-etl``) does.
* **tumour stage and grade** (OHDSI Oncology extension, "Condition Modifiers"): MEASUREMENT rows with
  ``measurement_event_id`` = the ``condition_occurrence_id`` and ``meas_event_field_concept_id`` =
  :data:`CONDITION_OCCURRENCE_ID_FIELD`.
* **disease dynamics** (Oncology extension, "Disease Dynamic" episodes): an assessment of the disease
  course is an EPISODE row coded with the Episode vocabulary's Disease Dynamic concept
  (:data:`PROGRESSION`, :data:`STABLE_DISEASE`, :data:`COMPLETE_REMISSION`, :data:`PARTIAL_REMISSION`);
  only a status the Episode vocabulary has no concept for (mCODE "improved") keeps RADFED's concept.
  Specs keep naming ``RADFED:progression`` / ``stable_disease`` / ``response``: a RADFED dynamics
  concept also matches the standard concepts it stands for (:data:`DYNAMICS_STANDARD`, applied by
  :func:`cdm.vocabulary.standard_equivalents`), so rows written before the switch, rows written
  now, and an attached CDM's own episodes all count.

Concept ids, and where each was checked (no vocabulary download ships with radfed; a site's Athena
load brings the concepts themselves):

* 1147127 ``condition_occurrence.condition_occurrence_id`` (CDM vocabulary, Field): OMOP CDM
  specification, OMOP_CDMv6.0_Table_Level.csv (OBSERVATION), and the OHDSI Oncology WG conventions
  ("static for all condition modifiers").
* 1147330 the MEASUREMENT table (CDM vocabulary): the MI-CDM ETL guide's value for
  ``image_feature_event_field_concept_id``, as used by published MI-CDM loaders (which note it
  superseded 1147138, the ``measurement.measurement_id`` Field concept).
* 32817 "EHR" (Type Concept): in cdm/data/omop_core_concepts.csv.
* 32946 Complete Remission, 32947 Partial Remission, 32948 Stable Disease, 32949 Progression (domain
  Episode, vocabulary Episode, class Disease Dynamic, standard): OHDSI Vocabulary-v5.0,
  ``working/manual_changes/2020/2020-09-23.sql`` creates these four names (and Remission before them)
  as Episode-domain, Disease Dynamic, standard concepts; ``2020-10-19.sql`` moves concepts 32939-32949
  into vocabulary 'Episode' and re-points the Maps-to of 'Disease Progression' (32677) to 32949.  The
  IDEA4RC FHIR IG lists the same four ids with the same names (Athena code system).  Their concept
  codes are not in those sources, so radfed ships no CONCEPT rows for them (a site's Athena download
  brings them, as for 32533 "Disease Episode").
"""

from __future__ import annotations

from cdm.ids import stable_id

MEASUREMENT_TABLE = 1147330
CONDITION_OCCURRENCE_ID_FIELD = 1147127
EHR = 32817
#: Episode vocabulary, concept class Disease Dynamic (ids checked as the module docstring says).
COMPLETE_REMISSION = 32946
PARTIAL_REMISSION = 32947
STABLE_DISEASE = 32948
PROGRESSION = 32949
#: RADFED disease-dynamics concept code -> the standard Disease Dynamic concepts it stands for.  A
#: "response" is either remission; "malignant_transformation" has no Episode concept.
DYNAMICS_STANDARD = {"progression": (PROGRESSION,), "stable_disease": (STABLE_DISEASE,),
                     "response": (COMPLETE_REMISSION, PARTIAL_REMISSION)}
#: The OMOP vocabulary whose concepts name genomic variants (loaded with Athena where a site has it).
OMOP_GENOMIC = "OMOP Genomic"


def imaging_procedure_id(study_uid: str) -> int:
    """The PROCEDURE_OCCURRENCE id of an imaging study (deterministic: re-runs and both ingests agree)."""
    return stable_id("imaging-study", study_uid, "procedure")


def imaging_procedure(study_uid: str, person_id: int, day, moment, visit_occurrence_id, modality_concept_id,
                      modality: str | None) -> dict:
    """The PROCEDURE_OCCURRENCE row standing for an imaging study whose source names no procedure.

    Its concept is the series' modality concept (MI-CDM's ``modality_concept_id`` is a Procedure-domain
    concept; 0 when there is none), its source value the DICOM modality, its type "EHR";
    ``procedure_source_concept_id`` stays NULL: the row copies the image_occurrence's coding, so the
    mapping report does not count the modality a second time.
    """
    return {
        "procedure_occurrence_id": imaging_procedure_id(study_uid),
        "person_id": person_id,
        "procedure_concept_id": modality_concept_id or 0,
        "procedure_date": day,
        "procedure_datetime": moment,
        "procedure_type_concept_id": EHR,
        "visit_occurrence_id": visit_occurrence_id,
        "procedure_source_value": (modality or "")[:50] or None,
    }


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

