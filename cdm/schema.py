"""The one CDM ``MetaData``: OMOP CDM v5.4 plus radfed's extensions, with the indexes queries need.

``SCHEMA_VERSION`` is written to the OMOP ``metadata`` table by :func:`cdm.db.create_cdm`; a later
release compares it to migrate an existing database instead of guessing its shape.
"""

from sqlalchemy import BigInteger, Index, Integer, MetaData

from cdm.extensions import define_extension_tables
from cdm.omop import OMOP_CDM_VERSION, define_omop_tables, tables_in

SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = "radfed.schema_version"

#: The OMOP tables by the specification's schema: clinical data and the vocabulary (loaded from
#: Athena or filled with site-local concepts).  Everything else in :data:`tables` is radfed's own.
CLINICAL_TABLES = tables_in("CDM")
VOCABULARY_TABLES = tables_in("VOCAB")
RESULTS_TABLES = tables_in("RESULTS")
OMOP_TABLES = CLINICAL_TABLES + VOCABULARY_TABLES + RESULTS_TABLES

metadata = MetaData()
define_omop_tables(metadata)
define_extension_tables(metadata)
tables = metadata.tables

# The OHDSI v5.4 index set for the lookups radfed makes (cohort criteria by person and concept,
# vocabulary resolution by code), named as in OHDSI's DDL, with two kinds of widening where the
# query plans need it (EXPLAIN QUERY PLAN / EXPLAIN ANALYZE in benchmarks/README.md):
#   * the concept index of each table an index event is taken from is (concept, person, date): the
#     index CTE ``SELECT person_id, MIN(date) ... WHERE concept IN (...) GROUP BY person_id`` is then
#     read from the index alone, already grouped by person (no table look-up, no temporary B-tree);
#   * (person, concept) composites also carry the date, so a windowed EXISTS criterion is answered
#     from the index.
# Each replaces the narrower OHDSI index whose columns are its prefix (no query loses an index).
_INDEXES = {
    "observation_period": [("person_id",)],
    "visit_occurrence": [("person_id",)],
    "condition_occurrence": [("person_id",), ("condition_concept_id", "person_id", "condition_start_date"),
                             ("person_id", "condition_concept_id", "condition_start_date")],
    "drug_exposure": [("person_id",), ("drug_concept_id", "person_id", "drug_exposure_start_date")],
    "procedure_occurrence": [("person_id",), ("procedure_concept_id", "person_id", "procedure_date")],
    "device_exposure": [("person_id",)],
    "measurement": [("person_id",), ("measurement_concept_id", "person_id", "measurement_date"),
                    ("person_id", "measurement_concept_id", "measurement_date")],
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
        # OHDSI's names for its one- and two-column indexes; a widened one is named by its roles
        # (``idx_measurement_concept_person_date``: PostgreSQL names stop at 63 characters)
        _name = "_".join(_columns) if len(_columns) < 3 else "_".join(
            "concept" if c.endswith("concept_id") else "person" if c == "person_id" else "date" for c in _columns)
        Index(f"idx_{_table}_{_name}", *(tables[_table].c[c] for c in _columns))

# On SQLite a table's rows live in a B-tree keyed by its rowid; a primary key declared BIGINT is a
# separate unique index beside it, so every look-up by person_id (each cohort member joined to
# ``person``, each image feature to its series) walks two B-trees.  Declared INTEGER, the key *is*
# the rowid: one B-tree, ~20% off an age-limited count on 100k persons.  Values are the same 64-bit
# integers; PostgreSQL keeps BIGINT.  (SQLite gives a rowid key a value when an INSERT leaves it
# NULL; every radfed id is deterministic and always written, cdm/ids.py.)
for _t in tables.values():
    _pk = list(_t.primary_key.columns)
    if len(_pk) == 1 and isinstance(_pk[0].type, BigInteger):
        _pk[0].type = _pk[0].type.with_variant(Integer(), "sqlite")
