"""The one CDM ``MetaData``: OMOP CDM v5.4 plus radfed's extensions, with the indexes queries need.

``SCHEMA_VERSION`` is written to the OMOP ``metadata`` table by :func:`cdm.db.create_cdm`; a later
release compares it to migrate an existing database instead of guessing its shape.
"""

from sqlalchemy import Index, MetaData

from cdm.extensions import define_extension_tables
from cdm.omop import define_omop_tables

OMOP_CDM_VERSION = "5.4"
SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = "radfed.schema_version"

#: Vocabulary tables (loaded from Athena or filled with site-local concepts).
VOCABULARY_TABLES = (
    "concept",
    "vocabulary",
    "domain",
    "concept_class",
    "concept_relationship",
    "relationship",
    "concept_synonym",
    "concept_ancestor",
    "drug_strength",
)

metadata = MetaData()
define_omop_tables(metadata)
define_extension_tables(metadata)
tables = metadata.tables

# The OHDSI v5.4 index set for the lookups radfed makes (cohort criteria by person and concept,
# vocabulary resolution by code), named as in OHDSI's DDL.
_INDEXES = {
    "observation_period": [("person_id",)],
    "visit_occurrence": [("person_id",)],
    "condition_occurrence": [("person_id",), ("condition_concept_id",), ("person_id", "condition_concept_id")],
    "drug_exposure": [("person_id",), ("drug_concept_id",)],
    "procedure_occurrence": [("person_id",), ("procedure_concept_id",)],
    "device_exposure": [("person_id",)],
    "measurement": [("person_id",), ("measurement_concept_id",), ("person_id", "measurement_concept_id")],
    "observation": [("person_id",), ("observation_concept_id",)],
    "specimen": [("person_id",)],
    "episode": [("person_id",)],
    "concept": [("concept_code",), ("vocabulary_id",)],
    "concept_relationship": [("concept_id_1",)],
    "concept_ancestor": [("ancestor_concept_id",), ("descendant_concept_id",)],
    "source_to_concept_map": [("source_code",), ("source_vocabulary_id",)],
}
for _table, _column_sets in _INDEXES.items():
    for _columns in _column_sets:
        Index(f"idx_{_table}_{'_'.join(_columns)}", *(tables[_table].c[c] for c in _columns))
