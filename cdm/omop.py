"""OMOP CDM v5.4 standard tables, column for column.

Generated from the official field-level specification (OHDSI/CommonDataModel ``inst/csv``,
``OMOP_CDMv5.4_Field_Level.csv``) and checked against it by ``tests/test_schema.py``.  Names,
order, types, nullability and primary keys are the specification's.  Two deliberate choices:

* identifiers of events and persons (``*_id`` columns outside the vocabulary tables) are BIGINT.
  radfed derives them deterministically from (source system, source identifier) by hashing, which
  needs 63 bits to stay collision-free at hospital scale; the specification's ``integer`` is a
  minimum and OHDSI's own DDL generators offer BIGINT for large sites.
* foreign keys are recorded on each column as ``column.info["references"] = (table, column)``
  rather than as enforced constraints, as OHDSI ships them in a separate, optional constraints
  DDL: sites load data before (or without) a full Athena vocabulary.
"""

from sqlalchemy import Date, DateTime, Float, Integer, MetaData, String, Table, Text

from cdm.columns import ID, col as _col


def define_omop_tables(metadata: MetaData) -> None:
    """Add every OMOP CDM v5.4 table to ``metadata``."""

    Table(
        "person",
        metadata,
        _col("person_id", ID, primary_key=True),
        _col("gender_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("year_of_birth", Integer, required=True),
        _col("month_of_birth", Integer),
        _col("day_of_birth", Integer),
        _col("birth_datetime", DateTime),
        _col("race_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("ethnicity_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("location_id", ID, references=("location", "location_id")),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("care_site_id", ID, references=("care_site", "care_site_id")),
        _col("person_source_value", String(50)),
        _col("gender_source_value", String(50)),
        _col("gender_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("race_source_value", String(50)),
        _col("race_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("ethnicity_source_value", String(50)),
        _col("ethnicity_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "observation_period",
        metadata,
        _col("observation_period_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("observation_period_start_date", Date, required=True),
        _col("observation_period_end_date", Date, required=True),
        _col("period_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "visit_occurrence",
        metadata,
        _col("visit_occurrence_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("visit_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("visit_start_date", Date, required=True),
        _col("visit_start_datetime", DateTime),
        _col("visit_end_date", Date, required=True),
        _col("visit_end_datetime", DateTime),
        _col("visit_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("care_site_id", ID, references=("care_site", "care_site_id")),
        _col("visit_source_value", String(50)),
        _col("visit_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("admitted_from_concept_id", Integer, references=("concept", "concept_id")),
        _col("admitted_from_source_value", String(50)),
        _col("discharged_to_concept_id", Integer, references=("concept", "concept_id")),
        _col("discharged_to_source_value", String(50)),
        _col("preceding_visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
    )

    Table(
        "visit_detail",
        metadata,
        _col("visit_detail_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("visit_detail_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("visit_detail_start_date", Date, required=True),
        _col("visit_detail_start_datetime", DateTime),
        _col("visit_detail_end_date", Date, required=True),
        _col("visit_detail_end_datetime", DateTime),
        _col("visit_detail_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("care_site_id", ID, references=("care_site", "care_site_id")),
        _col("visit_detail_source_value", String(50)),
        _col("visit_detail_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("admitted_from_concept_id", Integer, references=("concept", "concept_id")),
        _col("admitted_from_source_value", String(50)),
        _col("discharged_to_source_value", String(50)),
        _col("discharged_to_concept_id", Integer, references=("concept", "concept_id")),
        _col("preceding_visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("parent_visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("visit_occurrence_id", ID, required=True, references=("visit_occurrence", "visit_occurrence_id")),
    )

    Table(
        "condition_occurrence",
        metadata,
        _col("condition_occurrence_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("condition_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("condition_start_date", Date, required=True),
        _col("condition_start_datetime", DateTime),
        _col("condition_end_date", Date),
        _col("condition_end_datetime", DateTime),
        _col("condition_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("condition_status_concept_id", Integer, references=("concept", "concept_id")),
        _col("stop_reason", String(20)),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("condition_source_value", String(50)),
        _col("condition_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("condition_status_source_value", String(50)),
    )

    Table(
        "drug_exposure",
        metadata,
        _col("drug_exposure_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("drug_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("drug_exposure_start_date", Date, required=True),
        _col("drug_exposure_start_datetime", DateTime),
        _col("drug_exposure_end_date", Date, required=True),
        _col("drug_exposure_end_datetime", DateTime),
        _col("verbatim_end_date", Date),
        _col("drug_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("stop_reason", String(20)),
        _col("refills", Integer),
        _col("quantity", Float),
        _col("days_supply", Integer),
        _col("sig", Text),
        _col("route_concept_id", Integer, references=("concept", "concept_id")),
        _col("lot_number", String(50)),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("drug_source_value", String(50)),
        _col("drug_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("route_source_value", String(50)),
        _col("dose_unit_source_value", String(50)),
    )

    Table(
        "procedure_occurrence",
        metadata,
        _col("procedure_occurrence_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("procedure_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("procedure_date", Date, required=True),
        _col("procedure_datetime", DateTime),
        _col("procedure_end_date", Date),
        _col("procedure_end_datetime", DateTime),
        _col("procedure_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("modifier_concept_id", Integer, references=("concept", "concept_id")),
        _col("quantity", Integer),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("procedure_source_value", String(50)),
        _col("procedure_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("modifier_source_value", String(50)),
    )

    Table(
        "device_exposure",
        metadata,
        _col("device_exposure_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("device_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("device_exposure_start_date", Date, required=True),
        _col("device_exposure_start_datetime", DateTime),
        _col("device_exposure_end_date", Date),
        _col("device_exposure_end_datetime", DateTime),
        _col("device_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("unique_device_id", String(255)),
        _col("production_id", String(255)),
        _col("quantity", Integer),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("device_source_value", String(50)),
        _col("device_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_source_value", String(50)),
        _col("unit_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "measurement",
        metadata,
        _col("measurement_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("measurement_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("measurement_date", Date, required=True),
        _col("measurement_datetime", DateTime),
        _col("measurement_time", String(10)),
        _col("measurement_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("operator_concept_id", Integer, references=("concept", "concept_id")),
        _col("value_as_number", Float),
        _col("value_as_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("range_low", Float),
        _col("range_high", Float),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("measurement_source_value", String(50)),
        _col("measurement_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_source_value", String(50)),
        _col("unit_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("value_source_value", String(50)),
        _col("measurement_event_id", ID),
        _col("meas_event_field_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "observation",
        metadata,
        _col("observation_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("observation_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("observation_date", Date, required=True),
        _col("observation_datetime", DateTime),
        _col("observation_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("value_as_number", Float),
        _col("value_as_string", String(60)),
        _col("value_as_concept_id", Integer, references=("concept", "concept_id")),
        _col("qualifier_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("observation_source_value", String(50)),
        _col("observation_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("unit_source_value", String(50)),
        _col("qualifier_source_value", String(50)),
        _col("value_source_value", String(50)),
        _col("observation_event_id", ID),
        _col("obs_event_field_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "death",
        metadata,
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("death_date", Date, required=True),
        _col("death_datetime", DateTime),
        _col("death_type_concept_id", Integer, references=("concept", "concept_id")),
        _col("cause_concept_id", Integer, references=("concept", "concept_id")),
        _col("cause_source_value", String(50)),
        _col("cause_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "note",
        metadata,
        _col("note_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("note_date", Date, required=True),
        _col("note_datetime", DateTime),
        _col("note_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("note_class_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("note_title", String(250)),
        _col("note_text", Text, required=True),
        _col("encoding_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("language_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("provider_id", ID, references=("provider", "provider_id")),
        _col("visit_occurrence_id", ID, references=("visit_occurrence", "visit_occurrence_id")),
        _col("visit_detail_id", ID, references=("visit_detail", "visit_detail_id")),
        _col("note_source_value", String(50)),
        _col("note_event_id", ID),
        _col("note_event_field_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "note_nlp",
        metadata,
        _col("note_nlp_id", ID, primary_key=True),
        _col("note_id", ID, required=True),
        _col("section_concept_id", Integer, references=("concept", "concept_id")),
        _col("snippet", String(250)),
        _col("offset", String(50)),
        _col("lexical_variant", String(250), required=True),
        _col("note_nlp_concept_id", Integer, references=("concept", "concept_id")),
        _col("note_nlp_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("nlp_system", String(250)),
        _col("nlp_date", Date, required=True),
        _col("nlp_datetime", DateTime),
        _col("term_exists", String(1)),
        _col("term_temporal", String(50)),
        _col("term_modifiers", String(2000)),
    )

    Table(
        "specimen",
        metadata,
        _col("specimen_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("specimen_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("specimen_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("specimen_date", Date, required=True),
        _col("specimen_datetime", DateTime),
        _col("quantity", Float),
        _col("unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("anatomic_site_concept_id", Integer, references=("concept", "concept_id")),
        _col("disease_status_concept_id", Integer, references=("concept", "concept_id")),
        _col("specimen_source_id", String(50)),
        _col("specimen_source_value", String(50)),
        _col("unit_source_value", String(50)),
        _col("anatomic_site_source_value", String(50)),
        _col("disease_status_source_value", String(50)),
    )

    Table(
        "fact_relationship",
        metadata,
        _col("domain_concept_id_1", Integer, required=True, references=("concept", "concept_id")),
        _col("fact_id_1", ID, required=True),
        _col("domain_concept_id_2", Integer, required=True, references=("concept", "concept_id")),
        _col("fact_id_2", ID, required=True),
        _col("relationship_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "location",
        metadata,
        _col("location_id", ID, primary_key=True),
        _col("address_1", String(50)),
        _col("address_2", String(50)),
        _col("city", String(50)),
        _col("state", String(2)),
        _col("zip", String(9)),
        _col("county", String(20)),
        _col("location_source_value", String(50)),
        _col("country_concept_id", Integer, references=("concept", "concept_id")),
        _col("country_source_value", String(80)),
        _col("latitude", Float),
        _col("longitude", Float),
    )

    Table(
        "care_site",
        metadata,
        _col("care_site_id", ID, primary_key=True),
        _col("care_site_name", String(255)),
        _col("place_of_service_concept_id", Integer, references=("concept", "concept_id")),
        _col("location_id", ID, references=("location", "location_id")),
        _col("care_site_source_value", String(50)),
        _col("place_of_service_source_value", String(50)),
    )

    Table(
        "provider",
        metadata,
        _col("provider_id", ID, primary_key=True),
        _col("provider_name", String(255)),
        _col("npi", String(20)),
        _col("dea", String(20)),
        _col("specialty_concept_id", Integer, references=("concept", "concept_id")),
        _col("care_site_id", ID, references=("care_site", "care_site_id")),
        _col("year_of_birth", Integer),
        _col("gender_concept_id", Integer, references=("concept", "concept_id")),
        _col("provider_source_value", String(50)),
        _col("specialty_source_value", String(50)),
        _col("specialty_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("gender_source_value", String(50)),
        _col("gender_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "payer_plan_period",
        metadata,
        _col("payer_plan_period_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("payer_plan_period_start_date", Date, required=True),
        _col("payer_plan_period_end_date", Date, required=True),
        _col("payer_concept_id", Integer, references=("concept", "concept_id")),
        _col("payer_source_value", String(50)),
        _col("payer_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("plan_concept_id", Integer, references=("concept", "concept_id")),
        _col("plan_source_value", String(50)),
        _col("plan_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("sponsor_concept_id", Integer, references=("concept", "concept_id")),
        _col("sponsor_source_value", String(50)),
        _col("sponsor_source_concept_id", Integer, references=("concept", "concept_id")),
        _col("family_source_value", String(50)),
        _col("stop_reason_concept_id", Integer, references=("concept", "concept_id")),
        _col("stop_reason_source_value", String(50)),
        _col("stop_reason_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "cost",
        metadata,
        _col("cost_id", ID, primary_key=True),
        _col("cost_event_id", ID, required=True),
        _col("cost_domain_id", String(20), required=True, references=("domain", "domain_id")),
        _col("cost_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("currency_concept_id", Integer, references=("concept", "concept_id")),
        _col("total_charge", Float),
        _col("total_cost", Float),
        _col("total_paid", Float),
        _col("paid_by_payer", Float),
        _col("paid_by_patient", Float),
        _col("paid_patient_copay", Float),
        _col("paid_patient_coinsurance", Float),
        _col("paid_patient_deductible", Float),
        _col("paid_by_primary", Float),
        _col("paid_ingredient_cost", Float),
        _col("paid_dispensing_fee", Float),
        _col("payer_plan_period_id", ID),
        _col("amount_allowed", Float),
        _col("revenue_code_concept_id", Integer, references=("concept", "concept_id")),
        _col("revenue_code_source_value", String(50)),
        _col("drg_concept_id", Integer, references=("concept", "concept_id")),
        _col("drg_source_value", String(3)),
    )

    Table(
        "drug_era",
        metadata,
        _col("drug_era_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("drug_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("drug_era_start_date", Date, required=True),
        _col("drug_era_end_date", Date, required=True),
        _col("drug_exposure_count", Integer),
        _col("gap_days", Integer),
    )

    Table(
        "dose_era",
        metadata,
        _col("dose_era_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("drug_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("unit_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("dose_value", Float, required=True),
        _col("dose_era_start_date", Date, required=True),
        _col("dose_era_end_date", Date, required=True),
    )

    Table(
        "condition_era",
        metadata,
        _col("condition_era_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("condition_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("condition_era_start_date", Date, required=True),
        _col("condition_era_end_date", Date, required=True),
        _col("condition_occurrence_count", Integer),
    )

    Table(
        "episode",
        metadata,
        _col("episode_id", ID, primary_key=True),
        _col("person_id", ID, required=True, references=("person", "person_id")),
        _col("episode_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("episode_start_date", Date, required=True),
        _col("episode_start_datetime", DateTime),
        _col("episode_end_date", Date),
        _col("episode_end_datetime", DateTime),
        _col("episode_parent_id", ID),
        _col("episode_number", Integer),
        _col("episode_object_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("episode_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("episode_source_value", String(50)),
        _col("episode_source_concept_id", Integer, references=("concept", "concept_id")),
    )

    Table(
        "episode_event",
        metadata,
        _col("episode_id", ID, required=True, references=("episode", "episode_id")),
        _col("event_id", ID, required=True),
        _col("episode_event_field_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "metadata",
        metadata,
        _col("metadata_id", Integer, primary_key=True),
        _col("metadata_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("metadata_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("name", String(250), required=True),
        _col("value_as_string", String(250)),
        _col("value_as_concept_id", Integer, references=("concept", "concept_id")),
        _col("value_as_number", Float),
        _col("metadata_date", Date),
        _col("metadata_datetime", DateTime),
    )

    Table(
        "cdm_source",
        metadata,
        _col("cdm_source_name", String(255), required=True),
        _col("cdm_source_abbreviation", String(25), required=True),
        _col("cdm_holder", String(255), required=True),
        _col("source_description", Text),
        _col("source_documentation_reference", String(255)),
        _col("cdm_etl_reference", String(255)),
        _col("source_release_date", Date, required=True),
        _col("cdm_release_date", Date, required=True),
        _col("cdm_version", String(10)),
        _col("cdm_version_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("vocabulary_version", String(20), required=True),
    )

    Table(
        "concept",
        metadata,
        _col("concept_id", Integer, primary_key=True),
        _col("concept_name", String(255), required=True),
        _col("domain_id", String(20), required=True, references=("domain", "domain_id")),
        _col("vocabulary_id", String(20), required=True, references=("vocabulary", "vocabulary_id")),
        _col("concept_class_id", String(20), required=True, references=("concept_class", "concept_class_id")),
        _col("standard_concept", String(1)),
        _col("concept_code", String(50), required=True),
        _col("valid_start_date", Date, required=True),
        _col("valid_end_date", Date, required=True),
        _col("invalid_reason", String(1)),
    )

    Table(
        "vocabulary",
        metadata,
        _col("vocabulary_id", String(20), primary_key=True),
        _col("vocabulary_name", String(255), required=True),
        _col("vocabulary_reference", String(255)),
        _col("vocabulary_version", String(255)),
        _col("vocabulary_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "domain",
        metadata,
        _col("domain_id", String(20), primary_key=True),
        _col("domain_name", String(255), required=True),
        _col("domain_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "concept_class",
        metadata,
        _col("concept_class_id", String(20), primary_key=True),
        _col("concept_class_name", String(255), required=True),
        _col("concept_class_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "concept_relationship",
        metadata,
        _col("concept_id_1", Integer, required=True, references=("concept", "concept_id")),
        _col("concept_id_2", Integer, required=True, references=("concept", "concept_id")),
        _col("relationship_id", String(20), required=True, references=("relationship", "relationship_id")),
        _col("valid_start_date", Date, required=True),
        _col("valid_end_date", Date, required=True),
        _col("invalid_reason", String(1)),
    )

    Table(
        "relationship",
        metadata,
        _col("relationship_id", String(20), primary_key=True),
        _col("relationship_name", String(255), required=True),
        _col("is_hierarchical", String(1), required=True),
        _col("defines_ancestry", String(1), required=True),
        _col("reverse_relationship_id", String(20), required=True),
        _col("relationship_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "concept_synonym",
        metadata,
        _col("concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("concept_synonym_name", String(1000), required=True),
        _col("language_concept_id", Integer, required=True, references=("concept", "concept_id")),
    )

    Table(
        "concept_ancestor",
        metadata,
        _col("ancestor_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("descendant_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("min_levels_of_separation", Integer, required=True),
        _col("max_levels_of_separation", Integer, required=True),
    )

    Table(
        "source_to_concept_map",
        metadata,
        _col("source_code", String(50), required=True),
        _col("source_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("source_vocabulary_id", String(20), required=True),
        _col("source_code_description", String(255)),
        _col("target_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("target_vocabulary_id", String(20), required=True, references=("vocabulary", "vocabulary_id")),
        _col("valid_start_date", Date, required=True),
        _col("valid_end_date", Date, required=True),
        _col("invalid_reason", String(1)),
    )

    Table(
        "drug_strength",
        metadata,
        _col("drug_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("ingredient_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("amount_value", Float),
        _col("amount_unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("numerator_value", Float),
        _col("numerator_unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("denominator_value", Float),
        _col("denominator_unit_concept_id", Integer, references=("concept", "concept_id")),
        _col("box_size", Integer),
        _col("valid_start_date", Date, required=True),
        _col("valid_end_date", Date, required=True),
        _col("invalid_reason", String(1)),
    )

    Table(
        "cohort",
        metadata,
        _col("cohort_definition_id", Integer, required=True),
        _col("subject_id", ID, required=True),
        _col("cohort_start_date", Date, required=True),
        _col("cohort_end_date", Date, required=True),
    )

    Table(
        "cohort_definition",
        metadata,
        _col("cohort_definition_id", Integer, required=True),
        _col("cohort_definition_name", String(255), required=True),
        _col("cohort_definition_description", Text),
        _col("definition_type_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("cohort_definition_syntax", Text),
        _col("subject_concept_id", Integer, required=True, references=("concept", "concept_id")),
        _col("cohort_initiation_date", Date),
    )
