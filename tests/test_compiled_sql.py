"""Behaviour unchanged (issue 15): the SQL compiled for every example spec of the researcher guide is
byte for byte the SQL compiled before the restructuring (ff799b4; tests/compiled_sql.py wrote the
fixture), on SQLite and PostgreSQL, parameters included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiled_sql import compiled, fresh_cdm

FIXTURE = json.loads((Path(__file__).resolve().parent / "fixtures" / "compiled_examples.json").read_text())


@pytest.fixture(scope="module")
def cdm(tmp_path_factory):
    engine = fresh_cdm(tmp_path_factory.mktemp("cdm"))
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_example_compiles_to_the_same_sql_as_before(cdm, name):
    before = FIXTURE[name]
    now = compiled(before["spec"], cdm)
    for dialect in ("sqlite", "postgresql"):
        assert now[dialect]["sql"] == before[dialect]["sql"], f"{name}: {dialect} SQL changed"
        assert now[dialect]["params"] == before[dialect]["params"], f"{name}: {dialect} parameters changed"


def test_the_fixture_covers_the_examples_and_would_see_a_change(cdm):
    assert len(FIXTURE) >= 15 and all("SELECT" in FIXTURE[n]["sqlite"]["sql"] for n in FIXTURE)
    count = FIXTURE["count.yaml"]["spec"]
    assert "occurrence: first" in count
    changed = compiled(count.replace("occurrence: first", "occurrence: last"), cdm)  # the last diagnosis instead
    assert changed["sqlite"] != FIXTURE["count.yaml"]["sqlite"] and changed["postgresql"] != FIXTURE["count.yaml"]["postgresql"]
