"""OMOP CDM v5.4 standard tables, generated from the official specification.

The source of truth is OHDSI's field- and table-level specification (OHDSI/CommonDataModel,
``inst/csv``, commit f853f6e3, Apache-2.0), packaged unchanged as
``cdm/data/OMOP_CDMv5.4_Field_Level.csv`` and ``..._Table_Level.csv``.  Every table, column,
column order, type, nullability, primary key and foreign key below is read from it, so the schema
cannot drift from the standard; ``tests/test_schema.py`` also checks the packaged copy against
``../shared/omop``.  What is radfed's own, and therefore written here:

* identifiers of events and persons (``*_id`` integer columns outside the vocabulary, except the
  definition ids in :data:`SMALL_IDS`) are BIGINT.  radfed derives them deterministically from
  (source system, source identifier) by hashing, which needs 63 bits to stay collision-free at
  hospital scale; the specification's ``integer`` is a minimum and OHDSI's DDL generators offer
  BIGINT for large sites.
* foreign keys are recorded on each column as ``column.info["references"] = (table, column)``
  rather than as enforced constraints, as OHDSI ships them in a separate, optional constraints
  DDL: sites load data before (or without) a full Athena vocabulary.
* the OMOP v5.3 differences (:data:`V53_RENAMED`, :data:`V54_ADDED`), so that a site's existing
  v5.3 CDM can be read as v5.4 (:mod:`cdm.attach`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sqlalchemy import Date, DateTime, Float, Integer, MetaData, String, Table, Text
from sqlalchemy.types import TypeEngine

from cdm.columns import ID, col

OMOP_CDM_VERSION = "5.4"
FIELD_LEVEL_CSV = "OMOP_CDMv5.4_Field_Level.csv"
TABLE_LEVEL_CSV = "OMOP_CDMv5.4_Table_Level.csv"

#: Integer ``*_id`` columns that name a definition, not an event or person: they stay INTEGER.
SMALL_IDS = frozenset({("metadata", "metadata_id"), ("cohort", "cohort_definition_id"),
                       ("cohort_definition", "cohort_definition_id")})

#: OMOP v5.3 column names that v5.4 renamed: (table, v5.4 name) -> v5.3 name (OHDSI's v5.4 change log).
V53_RENAMED = {
    ("visit_occurrence", "admitted_from_concept_id"): "admitting_source_concept_id",
    ("visit_occurrence", "admitted_from_source_value"): "admitting_source_value",
    ("visit_occurrence", "discharged_to_concept_id"): "discharge_to_concept_id",
    ("visit_occurrence", "discharged_to_source_value"): "discharge_to_source_value",
    ("visit_detail", "admitted_from_concept_id"): "admitting_source_concept_id",
    ("visit_detail", "admitted_from_source_value"): "admitting_source_value",
    ("visit_detail", "discharged_to_concept_id"): "discharge_to_concept_id",
    ("visit_detail", "discharged_to_source_value"): "discharge_to_source_value",
    ("visit_detail", "parent_visit_detail_id"): "visit_detail_parent_id",
}
#: Tables and columns v5.4 added to v5.3 (the rest of v5.4 is v5.3's, under the names above).
V54_ADDED = {
    "episode": None, "episode_event": None, "cohort": None,  # whole tables
    "cdm_source": ("cdm_version_concept_id",),
    "device_exposure": ("production_id", "unit_concept_id", "unit_source_value", "unit_source_concept_id"),
    "location": ("country_concept_id", "country_source_value", "latitude", "longitude"),
    "measurement": ("unit_source_concept_id", "measurement_event_id", "meas_event_field_concept_id"),
    "metadata": ("metadata_id", "value_as_number"),
    "note": ("note_event_id", "note_event_field_concept_id"),
    "observation": ("value_source_value", "observation_event_id", "obs_event_field_concept_id"),
    "procedure_occurrence": ("procedure_end_date", "procedure_end_datetime"),
}


@dataclass(frozen=True)
class FieldSpec:
    """One row of the field-level specification."""

    table: str
    name: str
    datatype: str  # as written: integer, float, date, datetime, varchar(n), varchar(MAX)
    required: bool
    primary_key: bool
    references: tuple[str, str] | None


@dataclass(frozen=True)
class TableSpec:
    """One row of the table-level specification."""

    name: str
    schema: str  # CDM, VOCAB or RESULTS
    required: bool


def _packaged(filename: str) -> list[dict]:
    text = resources.files("cdm.data").joinpath(filename).read_text(encoding="utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


@cache
def field_specs() -> tuple[FieldSpec, ...]:
    """Every column of OMOP CDM v5.4, in the specification's order."""
    out = []
    for r in _packaged(FIELD_LEVEL_CSV):
        reference = None
        if r["isForeignKey"] == "Yes" and r["fkTableName"] != "NA":
            reference = (r["fkTableName"].lower(), r["fkFieldName"].lower())
        out.append(FieldSpec(
            table=r["cdmTableName"].lower(),
            # the specification quotes names that are reserved words in some dialects ("offset");
            # SQLAlchemy quotes them itself
            name=r["cdmFieldName"].lower().strip('"'),
            datatype=r["cdmDatatype"].lower(),
            required=r["isRequired"] == "Yes",
            primary_key=r["isPrimaryKey"] == "Yes",
            references=reference,
        ))
    return tuple(out)


@cache
def table_specs() -> dict[str, TableSpec]:
    """Every table of OMOP CDM v5.4, in the specification's order."""
    return {r["cdmTableName"].lower(): TableSpec(r["cdmTableName"].lower(), r["schema"], r["isRequired"] == "Yes")
            for r in _packaged(TABLE_LEVEL_CSV)}


def tables_in(schema: str) -> tuple[str, ...]:
    """The v5.4 tables the specification places in ``schema`` (``CDM``, ``VOCAB`` or ``RESULTS``)."""
    return tuple(t.name for t in table_specs().values() if t.schema == schema)


def is_event_id(field: FieldSpec) -> bool:
    """Whether radfed stores the integer ``field`` as a 63-bit identifier (see the module docstring)."""
    name = field.name
    is_id = name.endswith("_id") or name[-2:-1] == "_" and name[:-2].endswith("_id")  # fact_id_1
    return (is_id and "concept_id" not in name and (field.table, name) not in SMALL_IDS
            and table_specs()[field.table].schema != "VOCAB")


def column_type(field: FieldSpec) -> TypeEngine | type[TypeEngine]:
    """The SQLAlchemy type of a specification column."""
    datatype = field.datatype
    if datatype == "integer":
        return ID if is_event_id(field) else Integer
    if datatype == "float":
        return Float
    if datatype == "date":
        return Date
    if datatype == "datetime":
        return DateTime
    if datatype == "varchar(max)":
        return Text
    if datatype.startswith("varchar(") and datatype.endswith(")"):
        return String(int(datatype[8:-1]))
    raise ValueError(f"{field.table}.{field.name}: unknown OMOP datatype {field.datatype!r}")


def define_omop_tables(metadata: MetaData) -> None:
    """Add every OMOP CDM v5.4 table to ``metadata``, as the specification defines it."""
    columns: dict[str, list] = {name: [] for name in table_specs()}
    for field in field_specs():
        columns[field.table].append(col(field.name, column_type(field), required=field.required,
                                        primary_key=field.primary_key, references=field.references))
    for name, cols in columns.items():
        Table(name, metadata, *cols)


def v53_columns(table: str) -> list[tuple[str, str]] | None:
    """``(v5.4 name, v5.3 name)`` of the columns an OMOP v5.3 ``table`` has; ``None`` if v5.3 lacks it."""
    added = V54_ADDED.get(table, ())
    if added is None:
        return None
    return [(f.name, V53_RENAMED.get((table, f.name), f.name))
            for f in field_specs() if f.table == table and f.name not in added]

