"""``radfed-node ingest omop``: OMOP CSV exports as OHDSI tools write them, loaded idempotently, bad
rows quarantined with their file, line and reason; ``vocab load-athena`` reads comma files too."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from cdm.db import create_cdm, open_engine
from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import AthenaError, Vocabulary, load_athena
from node.cli import main
from node.omop.export import ingest_export
from omop_sites import unpack_eunomia

PERSON_HEADER = ["person_id", "gender_concept_id", "year_of_birth", "month_of_birth", "day_of_birth",
                 "birth_datetime", "race_concept_id", "ethnicity_concept_id", "person_source_value"]


@pytest.fixture(scope="module")
def eunomia(shared_dir, tmp_path_factory) -> Path:
    return unpack_eunomia(shared_dir, tmp_path_factory.mktemp("eunomia"))


def _cli(db, *args):
    return CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(tables[table])).scalar_one()


def _write(path: Path, rows: list[list[str]], delimiter: str = ",", quoting=csv.QUOTE_MINIMAL, bom: bool = False):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        csv.writer(f, delimiter=delimiter, quoting=quoting, lineterminator="\r\n").writerows(rows)


def test_export_shapes_load_alike(eunomia, tmp_path):
    """Lower-case names, tab or comma, every field quoted, a BOM, NA for a missing number, gzip,
    a v5.3 column name: the same rows either way."""
    persons = list(csv.reader(open(eunomia / "PERSON.csv", encoding="utf-8")))[:6]
    visits = list(csv.reader(open(eunomia / "VISIT_OCCURRENCE.csv", encoding="utf-8")))
    visits = [visits[0]] + [v for v in visits[1:] if v[1] in {p[0] for p in persons[1:]}][:20]
    plain, varied = tmp_path / "plain", tmp_path / "varied"
    plain.mkdir(), varied.mkdir()
    _write(plain / "PERSON.csv", persons)
    _write(plain / "VISIT_OCCURRENCE.csv", visits)
    odd = [row[:] for row in persons]
    odd[1][3] = "NA"  # month_of_birth: R's missing value
    _write(varied / "person.tsv", odd, delimiter="\t", quoting=csv.QUOTE_ALL, bom=True)
    v53 = [["admitting_source_concept_id" if h == "admitted_from_concept_id" else h for h in visits[0]]] + visits[1:]
    with gzip.open(varied / "visit_occurrence.csv.gz", "wt", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(v53)
    (varied / "README.txt").write_text("not a table")
    loaded = []
    for folder in (plain, varied):
        engine = open_engine(tmp_path / f"{folder.name}.sqlite")
        create_cdm(engine)
        summary = ingest_export(engine, folder)
        assert summary.total("quarantined") == 0 and not summary.ignored_columns
        assert summary.by_type["person"]["loaded"] == 5 and summary.by_type["visit_occurrence"]["loaded"] == 20
        with engine.connect() as conn:
            loaded.append([conn.execute(select(tables[t]).order_by(*tables[t].primary_key.columns)).all()
                           for t in ("person", "visit_occurrence")])
        engine.dispose()
    assert summary.other_files == ["README.txt"]
    person_plain, person_varied = loaded[0][0], loaded[1][0]
    assert person_varied[0].month_of_birth is None and person_plain[0].month_of_birth == int(persons[1][3])
    assert [r[4:] for r in person_plain] == [r[4:] for r in person_varied]
    assert loaded[0][1] == loaded[1][1]


def test_eunomia_import_idempotent_and_updates(eunomia, tmp_path):
    db = tmp_path / "cdm.sqlite"
    assert _cli(db, "init").exit_code == 0
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("PERSON", "OBSERVATION_PERIOD", "CONDITION_OCCURRENCE", "DEATH", "CONCEPT", "CDM_SOURCE"):
        (subset / f"{name}.csv").write_bytes((eunomia / f"{name}.csv").read_bytes())
    first = _cli(db, "ingest", "omop", str(subset), "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["by_table"]["condition_occurrence"]["loaded"] == 470 and summary["quarantined"] == 0
    assert summary["skipped_by_reason"] == {"CDM_SOURCE.csv: describes the exporting CDM (this CDM keeps its own)": 1}
    again = json.loads(_cli(db, "ingest", "omop", str(subset), "--json").output)
    assert again["loaded"] == again["updated"] == 0 and again["unchanged"] == summary["rows"]
    rows = list(csv.reader(open(subset / "DEATH.csv", encoding="utf-8")))
    rows[1][1] = "2019-06-01"  # a corrected death date
    _write(subset / "DEATH.csv", rows)
    third = json.loads(_cli(db, "ingest", "omop", str(subset), "--json").output)
    assert third["by_table"]["death"] == {"loaded": 0, "updated": 1, "unchanged": 2, "quarantined": 0,
                                          "skipped": 0, "unmapped_codes": 0}
    engine = open_engine(db)
    assert _count(engine, "death") == 3 and _count(engine, "person") == 28
    assert Vocabulary(engine).resolve("SNOMED:444814009") == 40481087


def test_bad_rows_are_quarantined_with_their_line_and_fixed_later(eunomia, tmp_path):
    db = tmp_path / "cdm.sqlite"
    _cli(db, "init")
    export = tmp_path / "export"
    export.mkdir()
    good = ["1", "8507", "1998", "4", "9", "1998-04-09 00:00:00", "8527", "38003564", "a"]
    _write(export / "PERSON.csv", [
        PERSON_HEADER, good,
        ["2", "8532", "19x8", "", "", "", "8527", "38003564", "b"],       # BAD_VALUE (line 3)
        ["3", "", "1980", "", "", "", "8527", "38003564", "c"],           # MISSING_REQUIRED (line 4)
        ["4", "8532", "1980"],                                            # FIELD_COUNT (line 5)
        good,                                                             # DUPLICATE_KEY (line 6)
        ["5", "8532", "1980", "", "", "", "8527", "38003564", "x" * 60],  # longer than varchar(50)
    ])
    _write(export / "MEASUREMENT.csv", [["person_id", "measurement_date"], ["1", "2020-01-01"]])  # no measurement_id
    _write(export / "CONCEPT.csv", [  # 8507 is MALE (Gender) at every node
        ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id", "standard_concept",
         "concept_code", "valid_start_date", "valid_end_date", "invalid_reason"],
        ["8507", "Something else", "Condition", "SNOMED", "Clinical Finding", "S", "123", "1970-01-01",
         "2099-12-31", ""]])
    result = _cli(db, "ingest", "omop", str(export), "--json")
    assert result.exit_code == 3, result.output  # PARTIAL: finished, something quarantined
    summary = json.loads(result.output)
    assert summary["by_table"]["person"]["loaded"] == 1
    assert summary["quarantined_by_reason"] == {"BAD_VALUE": 2, "MISSING_REQUIRED": 1, "FIELD_COUNT": 1,
                                                "DUPLICATE_KEY": 1, "UNREADABLE_FILE": 1, "ID_CONFLICT": 1}
    engine = open_engine(db)
    quarantine = tables["quarantine"]
    with engine.connect() as conn:
        rows = {r.source_line: r for r in conn.execute(select(quarantine).where(quarantine.c.ingest_kind == "omop"))}
    assert rows[3].reason_code == "BAD_VALUE" and "year_of_birth: '19x8' is not an integer" in rows[3].reason
    assert rows[3].payload.decode().startswith("2,8532,19x8") and rows[3].resource_id == "2"
    assert rows[7].reason_code == "BAD_VALUE" and "60 characters, OMOP allows 50" in rows[7].reason
    assert rows[None].reason_code == "UNREADABLE_FILE" and "no column measurement_id" in rows[None].reason
    assert any("concept_id 8507 is Gender:M at this node" in r.reason for r in rows.values())
    with engine.connect() as conn:
        assert conn.execute(select(tables["concept"].c.concept_name).where(
            tables["concept"].c.concept_id == 8507)).scalar() == "MALE"
    # the site fixes the file: the fixed rows load and leave the quarantine
    _write(export / "PERSON.csv", [PERSON_HEADER, good, ["2", "8532", "1978", "", "", "", "8527", "38003564", "b"]])
    (export / "MEASUREMENT.csv").unlink()
    (export / "CONCEPT.csv").unlink()
    result = _cli(db, "ingest", "omop", str(export))
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        left = {(r.resource_id, r.reason_code) for r in conn.execute(
            select(quarantine).where(quarantine.c.ingest_kind == "omop"))}
    assert ("2", "BAD_VALUE") not in left and ("1", "DUPLICATE_KEY") in left  # a duplicate stays: it was one
    assert _count(engine, "person") == 2


def test_rows_another_ingest_wrote_are_not_overwritten(tmp_path, any_cdm):
    """On both backends; a VOCABULARY row (a text key, which no other ingest can own) updates."""
    sqlite_cdm = any_cdm
    person_id = stable_id("fhir", "Patient", "p1")
    with sqlite_cdm.begin() as conn:
        conn.execute(insert(tables["person"]).values(person_id=person_id, gender_concept_id=8532, year_of_birth=1970,
                                                     race_concept_id=0, ethnicity_concept_id=0))
        conn.execute(insert(tables["source_record"]).values(
            source_key="fhir|Patient|p1", cdm_table="person", cdm_id=person_id, content_hash="x",
            loaded_at=dt.datetime(2024, 1, 1)))
    export = tmp_path / "export"
    export.mkdir()
    _write(export / "PERSON.csv", [PERSON_HEADER, [str(person_id), "8507", "1990", "", "", "", "0", "0", "z"]])
    _write(export / "VOCABULARY.csv", [["vocabulary_id", "vocabulary_name", "vocabulary_reference", "vocabulary_version",
                                        "vocabulary_concept_id"], ["RADFED", "radfed", "", "v2", "0"]])
    summary = ingest_export(sqlite_cdm, export)
    assert summary.quarantined == {"ID_CONFLICT": 1} and summary.by_type["vocabulary"]["updated"] == 1
    with sqlite_cdm.connect() as conn:
        assert conn.execute(select(tables["person"].c.year_of_birth)).scalar() == 1970


def test_unusable_input_is_one_clear_error(tmp_path):
    db = tmp_path / "cdm.sqlite"
    _cli(db, "init")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    result = _cli(db, "ingest", "omop", str(empty))
    assert result.exit_code == 2 and "holds no OMOP table files" in result.output
    result = _cli(tmp_path / "nocdm.sqlite", "ingest", "omop", str(empty))
    assert result.exit_code == 2 and "radfed-node init" in result.output


def test_load_athena_reads_comma_separated_files(eunomia, tmp_path, sqlite_cdm):
    """The issue's report: Eunomia's comma-separated vocabulary was rejected as unknown columns."""
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    for name in ("CONCEPT", "VOCABULARY", "CONCEPT_ANCESTOR"):
        (vocab / f"{name}.csv").write_bytes((eunomia / f"{name}.csv").read_bytes())
    loaded = load_athena(sqlite_cdm, vocab)
    assert loaded["concept"] == 2294
    assert Vocabulary(sqlite_cdm).resolve("LOINC:29463-7") == 3025315
    (vocab / "CONCEPT.csv").write_text("concept_id;concept_name\n1;x\n")
    with pytest.raises(AthenaError, match=r"CONCEPT.csv \(read as semicolon-separated\): required column"):
        load_athena(sqlite_cdm, vocab)
