"""Sites that already run OMOP (issue 20): OHDSI's Eunomia export imported with ``ingest omop`` and
the same data attached in place — PostgreSQL schemas ``cdm`` and ``vocab``, and a SQLite file —
answer a spread of specs exactly as pandas computes them from the CSVs; attach refuses what it
cannot serve without writing anything, and never writes the CDM it serves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import insert, inspect, select, text

from cdm.attach import AttachRefused, attach_cdm, inspect_cdm
from cdm.db import CDMError, create_cdm, open_engine, require_cdm, schema_version, with_layout
from cdm.schema import tables
from node.cli import main
from node.config import NodeConfig
from node.execute import run_request
from node.omop.export import ingest_export
from omop_sites import load_postgresql, load_sqlite, unpack_eunomia

pytestmark = pytest.mark.postgres


# -- the same data, four ways -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eunomia(shared_dir, tmp_path_factory) -> Path:
    return unpack_eunomia(shared_dir, tmp_path_factory.mktemp("eunomia"))


@pytest.fixture(scope="module")
def imported(shared_dir, tmp_path_factory):
    """A radfed CDM (SQLite) with the Eunomia zip loaded by ``ingest omop``."""
    engine = open_engine(tmp_path_factory.mktemp("imported") / "cdm.sqlite")
    create_cdm(engine)
    summary = ingest_export(engine, shared_dir / "omop" / "eunomia" / "Synthea27Nj_5.4.zip")
    assert summary.total("quarantined") == 0 and summary.total("loaded") > 290_000
    yield engine
    engine.dispose()


def _drop_schemas(url: str, *schemas: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def pg_attached(pg_server_url, eunomia):
    """Eunomia in PostgreSQL as OHDSI sites keep it (``cdm`` and ``vocab``), attached in place."""
    load_postgresql(pg_server_url, eunomia, "cdm", "vocab")
    engine = open_engine(with_layout(pg_server_url, {"cdm_schema": "cdm", "vocabulary_schema": "vocab"}))
    report = attach_cdm(engine)
    assert report.attached and report.version == "5.4" and report.persons == 28
    yield engine
    engine.dispose()
    _drop_schemas(pg_server_url, "cdm", "vocab", "radfed")


@pytest.fixture(scope="module")
def sqlite_attached(eunomia, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sqlite_attached")
    load_sqlite(folder / "omop.sqlite", eunomia)
    engine = open_engine(with_layout(folder / "radfed.sqlite", {"cdm_file": str(folder / "omop.sqlite")}))
    attach_cdm(engine)
    yield engine
    engine.dispose()


# -- the reference: pandas on the CSVs ----------------------------------------------------------------


class Reference:
    """The answers, computed by pandas from Eunomia's CSV files alone."""

    def __init__(self, folder: Path):
        read = lambda name, **kw: pd.read_csv(folder / f"{name}.csv", **kw)  # noqa: E731
        self.concept = read("CONCEPT", dtype=str, keep_default_na=False)
        self.person = read("PERSON").set_index("person_id")
        self.condition = read("CONDITION_OCCURRENCE", parse_dates=["condition_start_date"])
        self.measurement = read("MEASUREMENT", parse_dates=["measurement_date"])
        self.drug = read("DRUG_EXPOSURE", parse_dates=["drug_exposure_start_date"])
        self.period = read("OBSERVATION_PERIOD", parse_dates=["observation_period_start_date"])
        self.death = read("DEATH")

    def concept_id(self, code: str) -> int:
        vocabulary, value = code.split(":", 1)
        match = self.concept[(self.concept.vocabulary_id == vocabulary) & (self.concept.concept_code == value)]
        return int(match.concept_id.iloc[0])

    def index_first(self, code: str) -> pd.Series:
        events = self.condition[self.condition.condition_concept_id == self.concept_id(code)]
        return events.groupby("person_id").condition_start_date.min()

    def observation_start(self) -> pd.Series:
        return self.period.groupby("person_id").observation_period_start_date.min()

    def age(self, index: pd.Series) -> pd.Series:
        p = self.person.loc[index.index]
        later = (p.month_of_birth.fillna(1) * 100 + p.day_of_birth.fillna(1)) > (index.dt.month * 100 + index.dt.day)
        return index.dt.year - p.year_of_birth - later.astype(int)

    def measurements(self, code: str, index: pd.Series, start=None, end=None) -> pd.DataFrame:
        m = self.measurement[self.measurement.measurement_concept_id == self.concept_id(code)]
        m = m[m.person_id.isin(index.index)].copy()
        m["day"] = (m.measurement_date - m.person_id.map(index)).dt.days
        if start is not None:
            m = m[m.day >= start]
        if end is not None:
            m = m[m.day <= end]
        return m


@pytest.fixture(scope="module")
def ref(eunomia) -> Reference:
    return Reference(eunomia)


def _spread(ref: Reference):
    """(spec, expected result) pairs: counts with each kind of criterion, a crosstab, a summary, a histogram."""
    sinusitis = {"kind": "condition", "codes": ["SNOMED:444814009"]}
    idx = ref.index_first("SNOMED:444814009")
    out = [({"cohort": {"index": sinusitis}, "analysis": {"type": "count"}}, {"n": len(idx)})]

    heavy = ref.measurements("LOINC:29463-7", idx, -365, 365)
    heavy = heavy[heavy.value_as_number >= 60].person_id.nunique()
    out.append(({"cohort": {"index": sinusitis, "inclusion": [
        {"kind": "measurement", "code": "LOINC:29463-7", "value": {"min": 60}, "window": {"start": -365, "end": 365}}]},
        "analysis": {"type": "count"}}, {"n": heavy}))

    age = ref.age(idx)
    women = ref.person.loc[idx.index].gender_concept_id == 8532
    out.append(({"cohort": {"index": sinusitis, "age": {"min": 18}, "sex": ["F"]}, "analysis": {"type": "count"}},
                {"n": int(((age >= 18) & women).sum())}))

    stress = ref.condition[ref.condition.condition_concept_id == ref.concept_id("SNOMED:73595000")]
    before = stress[stress.person_id.isin(idx.index)]
    before = set(before[(before.condition_start_date - before.person_id.map(idx)).dt.days <= -1].person_id)
    out.append(({"cohort": {"index": sinusitis, "exclusion": [
        {"kind": "condition", "codes": ["SNOMED:73595000"], "window": {"end": -1}}]}, "analysis": {"type": "count"}},
        {"n": len(set(idx.index) - before)}))

    obs = ref.observation_start()
    hctz = ref.drug[ref.drug.drug_concept_id == ref.concept_id("RxNorm:310798")].groupby("person_id").size()
    died = set(ref.death.person_id)
    out.append(({"cohort": {"index": {"kind": "observation_start"}, "inclusion": [
        {"kind": "drug", "codes": ["RXNORM:310798"], "min_count": 3}, {"kind": "not", "not": {"kind": "death"}}]},
        "analysis": {"type": "count"}}, {"n": len((set(hctz[hctz >= 3].index) & set(obs.index)) - died)}))

    variables = {"sex": {"kind": "sex"}, "stress": {"kind": "condition", "codes": ["SNOMED:73595000"]},
                 "weight": {"kind": "measurement", "code": "LOINC:29463-7", "reduce": "first"},
                 "mean_weight": {"kind": "measurement", "code": "LOINC:29463-7", "reduce": "mean"},
                 "age": {"kind": "age"}}
    sex = ref.person.loc[idx.index].gender_concept_id.map({8507: "M", 8532: "F"})
    has_stress = pd.Series(idx.index.isin(stress.person_id), index=idx.index).map({True: 1.0, False: 0.0})
    cells = pd.DataFrame({"sex": sex, "stress": has_stress}).value_counts()
    out.append(({"cohort": {"index": sinusitis}, "variables": variables,
                 "analysis": {"type": "crosstab", "by": ["sex", "stress"]}},
                {"cells": {(s, v): int(n) for (s, v), n in cells.items()}}))

    after = ref.measurements("LOINC:29463-7", idx, 0)
    first = after.sort_values(["person_id", "measurement_date", "measurement_id"]).groupby("person_id").value_as_number.first()
    out.append(({"cohort": {"index": sinusitis}, "variables": variables,
                 "analysis": {"type": "summary", "variables": ["weight", "age"]}},
                {"variables": {"weight": {"n": len(first), "sum": first.sum(), "sum_sq": (first ** 2).sum()},
                               "age": {"n": len(age), "sum": float(age.sum()), "sum_sq": float((age ** 2).sum())}}}))

    mean = after.groupby("person_id").value_as_number.mean()
    edges = [0, 20, 40, 60, 80, 200]
    counts = pd.cut(mean, edges, right=False).value_counts(sort=False).tolist()
    out.append(({"cohort": {"index": sinusitis}, "variables": variables,
                 "analysis": {"type": "histogram", "variable": "mean_weight", "edges": edges}}, {"counts": counts}))
    return out


def _answers(engine, tmp_path, spread) -> list[dict]:
    config = NodeConfig(None, {"policy": {"min_cell_count": 1, "differencing_k": 0, "audit_linked_releases": False},
                               "site": {"data_dir": str(tmp_path)}})
    out = []
    for i, (spec, _expected) in enumerate(spread):
        response = run_request(engine, config, {"request_id": f"r{i}", "requester": "t", "spec": spec})
        if response["status"] == "ok":
            out.append(response["result"])
        else:  # a count of nobody reads like a small one (issue 16): compared as its refusal code
            assert response["code"] == "MIN_CELL", response
            out.append({"refused": response["code"]})
    return out


def _matches(result: dict, expected: dict) -> None:
    if "cells" in expected:
        # every category of the spec is listed (issue 16); an empty one is hidden like a small one
        released = {tuple(c["key"]): c["n"] for c in result["cells"]}
        assert {key: n for key, n in released.items() if n is not None} == expected["cells"]
        assert all(key not in expected["cells"] for key, n in released.items() if n is None)
    elif "variables" in expected:
        for name, want in expected["variables"].items():
            got = result["variables"][name]
            assert got["n"] == want["n"]
            assert got["sum"] == pytest.approx(want["sum"], rel=1e-12)
            assert got["sum_sq"] == pytest.approx(want["sum_sq"], rel=1e-12)
    elif "counts" in expected:
        # nobody lies outside the edges: those two cells are empty, hidden like small ones (issue 16)
        assert result["counts"] == expected["counts"] and result["below"] is None and result["above"] is None
    else:
        assert result == expected


@pytest.mark.parametrize("cdm", ["imported", "pg_attached", "sqlite_attached"])
def test_eunomia_answers_equal_pandas(cdm, request, ref, tmp_path):
    spread = _spread(ref)
    assert all(e.get("n", 1) > 0 for _s, e in spread), "every count in the spread selects someone"
    answers = _answers(request.getfixturevalue(cdm), tmp_path, spread)
    for (spec, expected), result in zip(spread, answers):
        _matches(result, expected)


def test_attached_and_imported_are_identical(imported, pg_attached, sqlite_attached, ref, tmp_path):
    """Beyond the spread's figures, whole released results are byte-identical across the three."""
    spread = _spread(ref)
    results = [json.dumps(_answers(e, tmp_path / str(i), spread), sort_keys=True)
               for i, e in enumerate((imported, pg_attached, sqlite_attached))]
    assert results[0] == results[1] == results[2]


# -- attach refuses, and never writes -----------------------------------------------------------------


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT schema_name FROM information_schema.schemata")}


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_attach_refuses_a_database_that_is_not_omop(pg_server_url, tmp_path):
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS shop")
        conn.execute("CREATE TABLE IF NOT EXISTS shop.orders (order_id int, customer text)")
    try:
        before = _schemas(pg_server_url)
        url = with_layout(pg_server_url, {"cdm_schema": "shop", "radfed_schema": "radfed_shop"})
        result = _cli("--db", url, "attach")
        assert result.exit_code == 2
        assert "not an OMOP CDM: no PERSON table in schema 'shop'" in result.output
        assert "Traceback" not in result.output and "nothing was written" in result.output
        assert _schemas(pg_server_url) == before  # no radfed schema, nothing
        result = _cli("--db", with_layout(pg_server_url, {"cdm_schema": "nosuch"}), "attach")
        assert result.exit_code == 2 and "schema 'nosuch' does not exist" in result.output
    finally:
        _drop_schemas(pg_server_url, "shop")
    # SQLite: a file that is not a CDM; radfed's own file is not even created
    other = tmp_path / "notes.sqlite"
    engine = open_engine(other)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE notes (note text)"))
    engine.dispose()
    own = tmp_path / "radfed.sqlite"
    result = _cli("--db", str(own), "attach", "--cdm-file", str(other))
    assert result.exit_code == 2 and "no PERSON table in file" in result.output
    assert not own.exists()


def test_attach_refuses_a_wrong_version_without_writing(pg_server_url, eunomia, tmp_path):
    load_postgresql(pg_server_url, eunomia, "cdm60", "cdm60", skip=("concept_relationship",))
    try:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute("UPDATE cdm60.cdm_source SET cdm_version = 'v6.0'")
        before = _schemas(pg_server_url)
        engine = open_engine(with_layout(pg_server_url, {"cdm_schema": "cdm60", "radfed_schema": "radfed60"}))
        with pytest.raises(AttachRefused, match=r"OMOP CDM version 6\.0 \(cdm_source.cdm_version\) is not supported"):
            attach_cdm(engine)
        with psycopg.connect(pg_server_url, autocommit=True) as conn:  # says 5.4, has v5.3's visit columns
            conn.execute("UPDATE cdm60.cdm_source SET cdm_version = '5.4'")
            conn.execute("ALTER TABLE cdm60.visit_occurrence RENAME admitted_from_concept_id TO admitting_source_concept_id")
        with pytest.raises(AttachRefused, match="missing.*visit_occurrence.admitted_from_concept_id"):
            attach_cdm(engine)
        assert _schemas(pg_server_url) == before
        with pytest.raises(CDMError, match="not attached yet"):
            require_cdm(engine)
        engine.dispose()
    finally:
        _drop_schemas(pg_server_url, "cdm60", "radfed60")
    # a v5.3 SQLite CDM with v5.4 in cdm_source: the columns say otherwise
    path = tmp_path / "v53.sqlite"
    load_sqlite(path, eunomia, version="5.3", skip=("concept_relationship",))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report = inspect_cdm(open_engine(with_layout(tmp_path / "own.sqlite", {"cdm_file": str(path)}), check=False))
    assert not report.ok and "cdm_source says OMOP v5.4" in report.text() and "(they are v5.3's" in report.text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and not (tmp_path / "own.sqlite").exists()


def test_v53_cdm_is_read_as_v54(eunomia, tmp_path, ref):
    """A v5.3 CDM (renamed visit columns, no EPISODE) answers like the v5.4 one, through radfed's
    views and empty stand-in tables, and its file is left byte for byte as it was."""
    path = tmp_path / "v53.sqlite"
    load_sqlite(path, eunomia, version="5.3", skip=("concept_relationship",))
    with open_engine(path).begin() as conn:
        conn.execute(text("UPDATE cdm_source SET cdm_version = 'v5.3.1'"))
        conn.execute(text("UPDATE visit_occurrence SET admitting_source_concept_id = 8717 WHERE visit_occurrence_id = 1"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    engine = open_engine(with_layout(tmp_path / "own.sqlite", {"cdm_file": str(path)}))
    report = attach_cdm(engine)
    assert report.version == "5.3" and "episode" in report.stand_ins and "visit_occurrence" in report.views
    answers = _answers(engine, tmp_path, _spread(ref)[:3])
    for (_spec, expected), result in zip(_spread(ref)[:3], answers):
        _matches(result, expected)
    visit = tables["visit_occurrence"]
    with engine.connect() as conn:
        assert conn.execute(select(visit.c.admitted_from_concept_id).where(visit.c.visit_occurrence_id == 1)).scalar() == 8717
        assert conn.execute(select(tables["episode"].c.episode_id)).first() is None
    engine.dispose()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_attached_cdm_is_never_written(pg_attached, pg_server_url, sqlite_attached, tmp_path):
    person = tables["person"]
    for engine in (pg_attached, sqlite_attached):
        with pytest.raises(CDMError, match="refused to write OMOP table person"):
            with engine.begin() as conn:
                conn.execute(insert(person).values(person_id=1, gender_concept_id=0, year_of_birth=1,
                                                   race_concept_id=0, ethnicity_concept_id=0))
        with pytest.raises(CDMError, match="attached OMOP CDM: use `radfed-node attach`, not init"):
            create_cdm(engine)
    url = str(pg_attached.url.render_as_string(hide_password=False))
    url = with_layout(url, {"cdm_schema": "cdm", "vocabulary_schema": "vocab"})
    for command in (["ingest", "omop", str(tmp_path)], ["ingest", "fhir", str(tmp_path)],
                    ["vocab", "load-athena", str(tmp_path)]):
        result = _cli("--db", url, *command)
        assert result.exit_code == 2, result.output
        assert "attached OMOP CDM read-only" in result.output and "Traceback" not in result.output
    result = _cli("--db", url, "status", "--json")
    status = json.loads(result.output)
    assert status["tables"]["person"] == 28 and "schema cdm" in status["attached"]
    with psycopg.connect(pg_server_url) as conn:  # radfed's tables are in its own schema only
        owned = {r[0] for r in conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'image_feature'")}
    assert owned == {"radfed"}


def test_init_refuses_a_database_holding_someone_elses_cdm(eunomia, tmp_path):
    """The issue's report: `init` on a database with Eunomia's tables wrote rows, then failed."""
    path = tmp_path / "eunomia.sqlite"
    load_sqlite(path, eunomia, skip=("concept_relationship",))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result = _cli("--db", str(path), "init")
    assert result.exit_code == 2 and "already holds an OMOP CDM that radfed did not create" in result.output
    assert "radfed-node attach" in result.output and "Traceback" not in result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    engine = open_engine(path)
    assert schema_version(engine) is None
    result = _cli("--db", str(path), "status")
    assert result.exit_code == 2 and "radfed-node attach" in result.output
    spec = tmp_path / "count.yaml"
    spec.write_text('cohort: {index: {kind: condition, codes: ["SNOMED:444814009"]}}\nanalysis: {type: count}\n')
    result = _cli("--db", str(path), "query", str(spec))
    assert result.exit_code == 2 and "no radfed CDM" in result.output


def test_read_only_role_attaches_and_indexes_are_advised_then_created(pg_server_url, eunomia):
    """radfed needs SELECT on the CDM and a schema of its own; indexes on the CDM need the owner."""
    load_postgresql(pg_server_url, eunomia, "cdmix", "cdmix", skip=("concept_relationship",))
    role = f"radfed_ro_{pg_server_url.rsplit('_', 1)[-1]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cdmix TO {0}; GRANT SELECT ON ALL TABLES IN SCHEMA cdmix TO {0}; "
                             "CREATE SCHEMA radfedix AUTHORIZATION {0}").format(sql.Identifier(role)))
    try:
        url = with_layout(pg_server_url, {"cdm_schema": "cdmix", "radfed_schema": "radfedix"})
        engine = open_engine(url)
        report = inspect_cdm(engine)
        missing = {i.name for i in report.indexes if not i.present}
        assert "idx_measurement_concept_person_date" in missing
        advice = next(i for i in report.indexes if i.name == "idx_measurement_concept_person_date")
        assert advice.ddl.startswith("CREATE INDEX idx_measurement_concept_person_date ON cdmix.measurement")
        with psycopg.connect(pg_server_url, autocommit=True) as conn:  # the site already has one of them
            conn.execute("CREATE INDEX site_person ON cdmix.measurement (person_id)")
        assert "idx_measurement_person_id" not in {i.name for i in inspect_cdm(engine).indexes if not i.present}
        read_only = url.replace("postgres@", f"{role}@", 1)
        result = _cli("--db", read_only, "attach", "--create-indexes")
        assert result.exit_code == 3, result.output  # attached; the indexes were not allowed
        assert "attached:" in result.output and "not created: must be owner of table" in result.output
        result = _cli("--db", url, "attach", "--create-indexes")
        assert result.exit_code == 0, result.output
        assert not [i for i in inspect_cdm(engine).indexes if not i.present]
        names = {i["name"] for i in inspect(engine).get_indexes("measurement", schema="cdmix")}
        assert "idx_measurement_concept_person_date" in names
        engine.dispose()
    finally:
        _drop_schemas(pg_server_url, "cdmix", "radfedix")
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_missing_optional_table_gets_a_stand_in_until_the_site_adds_it(pg_server_url, eunomia, ref, tmp_path):
    load_postgresql(pg_server_url, eunomia, "cdmsi", "cdmsi", skip=("concept_relationship", "episode", "note_nlp"))
    try:
        url = with_layout(pg_server_url, {"cdm_schema": "cdmsi", "radfed_schema": "radfedsi"})
        engine = open_engine(url)
        report = attach_cdm(engine)
        assert {"episode", "note_nlp", "concept_relationship"} <= set(report.stand_ins)
        spec = {"cohort": {"index": {"kind": "condition", "codes": ["SNOMED:444814009"]},
                           "exclusion": [{"kind": "episode", "codes": ["SNOMED:73595000"]}]},
                "analysis": {"type": "count"}}
        assert _answers(engine, tmp_path, [(spec, None)]) == [{"n": len(ref.index_first("SNOMED:444814009"))}]
        with psycopg.connect(pg_server_url, autocommit=True) as conn:  # the site's ETL adds EPISODE
            conn.execute("CREATE TABLE cdmsi.episode (LIKE radfedsi.episode)")
        with pytest.raises(CDMError, match="now has episode.*run `radfed-node attach` again"):
            require_cdm(engine)
        report = attach_cdm(engine)
        assert "episode" not in report.stand_ins
        require_cdm(engine)
        assert "episode" not in inspect(engine).get_table_names(schema="radfedsi")
        engine.dispose()
    finally:
        _drop_schemas(pg_server_url, "cdmsi", "radfedsi")


def test_layout_errors_are_clear(tmp_path):
    for url, message in [
        ("postgresql://postgres@127.0.0.1:5432/x?vocabulary_schema=vocab", "needs cdm_schema"),
        ("postgresql://postgres@127.0.0.1:5432/x?cdm_schema=Cdm;drop", "lower-case letters"),
        ("postgresql://postgres@127.0.0.1:5432/x?cdm_schema=cdm&radfed_schema=cdm", "radfed_schema must be"),
        (f"sqlite:///{tmp_path}/own.sqlite?cdm_schema=cdm", "does not apply to sqlite"),
        (f"sqlite:///{tmp_path}/own.sqlite?cdm_file={tmp_path}/none.sqlite", "does not exist"),
    ]:
        with pytest.raises(CDMError, match=message):
            open_engine(url)


def test_a_duckdb_cdm_is_refused_clearly_and_nothing_is_written(tmp_path):
    """DuckDB is not served (docs/site-admin-guide.md says why): a duckdb:// URL is a usage error, and a
    DuckDB file given as the CDM file is reported unreadable; neither file is created or changed."""
    duck = tmp_path / "cdm.duckdb"
    result = _cli("--db", f"duckdb:///{duck}", "attach")
    assert result.exit_code == 2 and "unsupported database 'duckdb'" in result.output and not duck.exists()
    duck.write_bytes(b"DUCK" + bytes(range(256)) * 16)  # not an SQLite file, as a DuckDB file is not
    before = duck.read_bytes()
    own = tmp_path / "radfed.sqlite"
    result = _cli("--db", str(own), "attach", "--cdm-file", str(duck))
    assert result.exit_code == 2 and "nothing was written" in result.output and "could not be read" in result.output
    assert duck.read_bytes() == before and not own.exists()


# -- the same data from FHIR, from an OMOP export of it, and attached: the same answers --------------


def test_fhir_site_its_omop_export_and_the_attached_export_answer_alike(pg_server_url, tmp_path):
    """A FHIR-loaded site (A) dumped as an OMOP export, imported with ``ingest omop`` (B) and loaded into
    PostgreSQL schemas and attached (C): every spec over the standard tables — image features included,
    through their MI-CDM measurement rows — gives byte-identical released results."""
    from cdm.schema import CLINICAL_TABLES, VOCABULARY_TABLES
    from node.ingest.engine import ingest_paths
    from node.synth import SynthOptions, generate
    from omop_sites import export_csv

    generate(tmp_path / "synth", SynthOptions(sites=1, patients=40, seed=5, dicom=False, bad_records=False))
    fhir = open_engine(tmp_path / "fhir.sqlite")
    create_cdm(fhir)
    assert ingest_paths(fhir, [tmp_path / "synth" / "site-1" / "fhir"], workers=0).total("quarantined") == 0
    export = export_csv(fhir, tmp_path / "export",
                        [t for t in CLINICAL_TABLES + VOCABULARY_TABLES if t not in ("metadata", "cdm_source")])
    imported = open_engine(tmp_path / "imported.sqlite")
    create_cdm(imported)
    summary = ingest_export(imported, export)
    assert summary.total("quarantined") == 0 and not summary.ignored_columns
    load_postgresql(pg_server_url, export, "rt_cdm", "rt_vocab", big_ids=True)
    try:
        attached = open_engine(with_layout(pg_server_url, {"cdm_schema": "rt_cdm", "vocabulary_schema": "rt_vocab",
                                                           "radfed_schema": "rt_radfed"}))
        attach_cdm(attached)
        nf1 = {"kind": "condition", "codes": ["SNOMED:92824003"]}
        variables = {"creat": {"kind": "measurement", "code": "LOINC:2160-0", "reduce": "mean", "window": {}},
                     "tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "last", "window": {}},
                     "adc": {"kind": "measurement", "code": "RADFED:adc_mean", "reduce": "first", "window": {}},
                     "nf1": {"kind": "condition", "codes": ["SNOMED:92824003"]}, "sex": {"kind": "sex"},
                     "age": {"kind": "age"}}
        everyone = {"index": {"kind": "observation_start"}}
        spread = [({"cohort": everyone, "analysis": {"type": "count"}}, None),
                  ({"cohort": {"index": nf1, "age": {"min": 18}}, "analysis": {"type": "count"}}, None),
                  ({"cohort": {**everyone, "inclusion": [{"kind": "death"}]}, "analysis": {"type": "count"}}, None),
                  ({"cohort": everyone, "variables": variables, "analysis": {"type": "crosstab", "by": ["sex", "nf1"]}}, None),
                  ({"cohort": everyone, "variables": variables,
                    "analysis": {"type": "summary", "variables": ["creat", "tf", "adc", "age"]}}, None),
                  # disease dynamics (Episode vocabulary concepts, named by RADFED's names) and imaging
                  # studies as MI-CDM procedures (their modality concept)
                  ({"cohort": {**everyone, "inclusion": [{"kind": "episode", "codes": ["RADFED:progression"]}]},
                    "analysis": {"type": "count"}}, None),
                  ({"cohort": {**everyone, "inclusion": [{"kind": "procedure", "codes": ["DICOM:MR", "DICOM:CT", "DICOM:PT"]}]},
                    "analysis": {"type": "count"}}, None)]
        results = [json.dumps(_answers(e, tmp_path / name, spread), sort_keys=True)
                   for name, e in (("a", fhir), ("b", imported), ("c", attached))]
        assert results[0] == results[1] == results[2]
        first = json.loads(results[0])
        assert first[0]["n"] == 40 and first[4]["variables"]["adc"]["n"] > 0 and first[5]["n"] > 0 and first[6]["n"] > 0
        attached.dispose()
    finally:
        _drop_schemas(pg_server_url, "rt_cdm", "rt_vocab", "rt_radfed")
