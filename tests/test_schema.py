"""The CDM schema against the official OMOP CDM v5.4 field-level specification."""

import csv

import pytest
from sqlalchemy import BigInteger, Date, DateTime, Float, Integer, String, Text, inspect

from cdm.db import CDMError, create_cdm, drop_cdm, open_engine, schema_version, table_counts
from cdm.schema import SCHEMA_VERSION, metadata, tables

EXTENSIONS = {
    "image_occurrence", "image_feature", "variant_occurrence", "variant_annotation", "ctdna_result",
    "biopsy_location", "signal_window", "quarantine", "source_record", "pending_reference",
}


def test_packaged_specification_is_the_official_one(shared_dir):
    """cdm/omop.py generates the tables from the packaged copy: it must be OHDSI's file, unchanged."""
    from importlib import resources

    for name in ("OMOP_CDMv5.4_Field_Level.csv", "OMOP_CDMv5.4_Table_Level.csv"):
        packaged = resources.files("cdm.data").joinpath(name).read_bytes()
        assert packaged == (shared_dir / "omop" / name).read_bytes(), name


def spec_rows(shared_dir):
    with open(shared_dir / "omop" / "OMOP_CDMv5.4_Field_Level.csv", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def field_name(row) -> str:
    # The spec quotes names that are reserved words in some dialects ("offset"); SQLAlchemy quotes them itself.
    return row["cdmFieldName"].lower().strip('"')


def type_matches(spec_type: str, column) -> bool:
    spec_type = spec_type.lower()
    if spec_type == "integer":
        return isinstance(column.type, (Integer, BigInteger))
    if spec_type == "float":
        return isinstance(column.type, Float)
    if spec_type == "date":
        return isinstance(column.type, Date) and not isinstance(column.type, DateTime)
    if spec_type == "datetime":
        return isinstance(column.type, DateTime)
    if spec_type == "varchar(max)":
        return isinstance(column.type, Text)
    assert spec_type.startswith("varchar(")
    return isinstance(column.type, String) and column.type.length == int(spec_type[8:-1])


def test_every_spec_table_and_column_in_order(shared_dir):
    rows = spec_rows(shared_dir)
    spec_tables: dict[str, list[str]] = {}
    for r in rows:
        spec_tables.setdefault(r["cdmTableName"].lower(), []).append(field_name(r))
    assert set(spec_tables) | EXTENSIONS == set(tables)
    for name, columns in spec_tables.items():
        assert [c.name for c in tables[name].columns] == columns, name


def test_column_types_required_and_keys(shared_dir):
    for r in spec_rows(shared_dir):
        column = tables[r["cdmTableName"].lower()].c[field_name(r)]
        where = f"{r['cdmTableName']}.{r['cdmFieldName']}"
        assert type_matches(r["cdmDatatype"], column), f"{where}: {column.type!r} vs {r['cdmDatatype']}"
        assert column.primary_key == (r["isPrimaryKey"] == "Yes"), where
        assert column.nullable == (r["isRequired"] != "Yes" and r["isPrimaryKey"] != "Yes"), where
        expected_ref = (
            (r["fkTableName"].lower(), r["fkFieldName"].lower())
            if r["isForeignKey"] == "Yes" and r["fkTableName"] != "NA"
            else None
        )
        assert column.info.get("references") == expected_ref, where


def test_extension_columns_are_documented_and_references_resolve():
    for name in EXTENSIONS:
        for column in tables[name].columns:
            assert column.comment, f"{name}.{column.name} is undocumented"
    for table in metadata.tables.values():
        for column in table.columns:
            ref = column.info.get("references")
            if ref:
                assert ref[1] in tables[ref[0]].c, f"{table.name}.{column.name} -> {ref}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ddl_round_trip(backend, tmp_path, request):
    url = tmp_path / "rt.sqlite" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_engine(url)
    assert schema_version(engine) is None
    create_cdm(engine)
    create_cdm(engine)  # idempotent
    assert schema_version(engine) == SCHEMA_VERSION
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) == set(tables)
    for name, table in tables.items():
        reflected = {c["name"]: c for c in inspector.get_columns(name)}
        assert list(reflected) == [c.name for c in table.columns], name
        for column in table.columns:
            assert reflected[column.name]["nullable"] == column.nullable, f"{name}.{column.name}"
        assert set(inspector.get_pk_constraint(name)["constrained_columns"]) == {
            c.name for c in table.primary_key.columns
        }, name
    counts = table_counts(engine)
    assert counts["metadata"] == 1 and counts["cdm_source"] == 1 and counts["concept"] > 40
    drop_cdm(engine)
    assert inspect(engine).get_table_names() == []
    with pytest.raises(CDMError, match="radfed-node init"):
        table_counts(engine)
    engine.dispose()


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql://nobody@127.0.0.1:1/none", "cannot connect"),
        ("nosuchdb://host/x", "unsupported database"),
        ("/no/such/folder/cdm.sqlite", "does not exist"),
        ("postgresql://postgres@127.0.0.1:5432/radfed_no_such_database", "does not exist"),
    ],
)
def test_bad_database_url_gives_clear_error(url, message):
    with pytest.raises(CDMError, match=message) as info:
        open_engine(url)
    assert "Traceback" not in str(info.value)


def test_newer_schema_version_is_refused(sqlite_cdm):
    from sqlalchemy import update

    with sqlite_cdm.begin() as conn:
        conn.execute(update(tables["metadata"]).values(value_as_number=SCHEMA_VERSION + 1))
    with pytest.raises(CDMError, match="migrate"):
        create_cdm(sqlite_cdm)
