"""Spec -> SQL -> released result, the same on SQLite and PostgreSQL, with rows inserted via Core."""

from cdm.compiler import compile_spec
from cdm.spec import SpecError, parse_spec
from node.audit import AuditLog
from node.config import NodeConfig
from node.execute import run_request
from test_policy_attacks import load_persons

import pytest


def _load(engine, n=30):
    """Person i of :func:`test_policy_attacks.load_persons`, born 1950 + i, MDM2 VAF 0.1 * (i % 10)."""
    load_persons(engine, n, year_of_birth=lambda i: 1950 + i, allele_frequency=lambda i: 0.1 * (i % 10))


BASE = {"index": {"kind": "condition", "codes": ["RADFED:progression"]}}
VARS = {"sex": {"kind": "sex"}, "tf": {"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "reduce": "mean"},
        "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}, "age": {"kind": "age"}}


def _run(engine, analysis, cohort=BASE, config=None):
    return run_request(engine, config, {"request_id": "r", "requester": "t",
                                      "spec": {"cohort": cohort, "variables": VARS, "analysis": analysis}})


def test_count_crosstab_summary(any_cdm):
    _load(any_cdm)
    assert _run(any_cdm, {"type": "count"})["result"] == {"n": 30}
    r = _run(any_cdm, {"type": "count"}, {**BASE, "inclusion": [{"kind": "variant", "gene": "MDM2", "vaf": {"min": 0.25}}]})
    assert r["result"]["n"] == sum(1 for i in range(1, 31) if i % 3 == 0 and 0.1 * (i % 10) >= 0.25)
    r = _run(any_cdm, {"type": "count"}, {**BASE, "age": {"max": 1969 - 1950}, "sex": ["F"]})
    # born 1951..1969 => age at 2020 >= 51; age <= 19 matches nobody: a zero reads like a small count
    # (issue 16, family 2), so "refused" never tells that someone matches
    assert (r["status"], r["code"], r["result"]) == ("refused", "MIN_CELL", None)
    small = _run(any_cdm, {"type": "count"}, {**BASE, "age": {"max": 42}, "sex": ["F"]})  # persons 28 and 30
    assert {k: small[k] for k in ("status", "code", "message")} == {k: r[k] for k in ("status", "code", "message")}
    r = _run(any_cdm, {"type": "crosstab", "by": ["sex", "mdm2"]})
    cells = {tuple(c["key"]): c["n"] for c in r["result"]["cells"]}
    assert cells[("F", 0.0)] == 10 and cells[("M", 0.0)] == 10 and cells[("M", 1.0)] == 5
    r = _run(any_cdm, {"type": "summary", "variables": ["tf"]})
    assert r["result"]["variables"]["tf"] == {"n": 30, "sum": 465.0, "sum_sq": float(sum(i * i for i in range(1, 31)))}
    r = _run(any_cdm, {"type": "count"}, {**BASE, "exclusion": [{"kind": "measurement", "code": "RADFED:ctdna_tumour_fraction", "value": {"min": 4}}]})
    assert r["status"] == "refused" and r["code"] == "MIN_CELL" and r["result"] is None


def test_unknown_code_matches_nothing_and_malformed_is_bad_spec(sqlite_cdm):
    _load(sqlite_cdm)
    r = _run(sqlite_cdm, {"type": "count"}, {"index": {"kind": "condition", "codes": ["SNOMED:999999"]}})
    assert r["code"] == "UNKNOWN_CODE" and r["result"] is None  # issue 6: refused, never a silent 0
    r = _run(sqlite_cdm, {"type": "count"}, {"index": {"kind": "condition", "codes": ["bad code"]}})
    assert r["code"] == "BAD_SPEC" and "cohort.index" in r["message"]


def test_spec_text_never_in_sql(sqlite_cdm):
    evil = "x'); DROP TABLE person; --"
    spec = parse_spec({"cohort": {**BASE, "inclusion": [{"kind": "variant", "gene": evil}]},
                       "variables": {"v": {"kind": "image_feature", "code": "RADFED:adc_mean", "roi": evil}},
                       "analysis": {"type": "summary", "variables": ["v"]}})
    sql = str(compile_spec(spec, sqlite_cdm).query.compile(sqlite_cdm, compile_kwargs={"literal_binds": False}))
    assert evil not in sql and "DROP" not in sql
    with pytest.raises(SpecError):
        parse_spec({"analysis": {"type": "crosstab", "by": ["nope"]}})


def test_requests_are_audited_and_tampering_detected(sqlite_cdm, tmp_path):
    _load(sqlite_cdm)
    config = NodeConfig(tmp_path / "node.toml", {"site": {"name": "site-a"}, "policy": {"min_cell_count": 3}})
    ok = _run(sqlite_cdm, {"type": "count"}, config=config)
    bad = _run(sqlite_cdm, {"type": "count"}, {"index": {"kind": "nope"}}, config=config)
    assert ok["site"] == "site-a" and bad["code"] == "BAD_SPEC"
    log = AuditLog.for_config(config)
    entries = log.entries()
    assert [e["decision"] for e in entries] == ["ok", "refused"] and entries[0]["released"] == {"n": 30}
    assert log.verify() == []
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0].replace('"n": 30', '"n": 31'), lines[1]]) + "\n")
    assert any("edited" in p for p in log.verify())
    log.path.write_text(lines[0] + "\n")
    assert any("removed" in p for p in log.verify())


def test_differencing_attack_is_refused(any_cdm, tmp_path):
    _load(any_cdm)
    config = NodeConfig(tmp_path / "node.toml", {"site": {"name": "site-a"}})
    full = _run(any_cdm, {"type": "count"}, config=config)
    assert full["result"] == {"n": 30}
    # same cohort minus one patient (the youngest): the difference would reveal that patient
    minus_one = {**BASE, "age": {"min": 41}}  # person i is 70 - i at index; drops i = 30
    attack = _run(any_cdm, {"type": "count"}, minus_one, config=config)
    assert attack["status"] == "refused" and attack["code"] == "DIFFERENCING" and attack["result"] is None
    assert _run(any_cdm, {"type": "count"}, config=config)["result"] == {"n": 30}  # same set again is fine
    other = NodeConfig(tmp_path / "node.toml", {"site": {"name": "site-a"}})
    r = run_request(any_cdm, other, {"request_id": "x", "requester": "bob",
                                     "spec": {"cohort": minus_one, "analysis": {"type": "count"}}})
    # a different requester is refused too: researchers may collude, so the site-wide auditor
    # (node/disclosure/auditor.py) differences against what anyone was given
    assert r["status"] == "refused" and r["code"] == "DIFFERENCING" and "to anyone" in r["message"]


def test_crosstab_small_cells_and_allowlist(any_cdm, tmp_path):
    _load(any_cdm)
    # mdm2: 10 carriers, 20 not; with min cell 11 the 10 is suppressed, and the 20 too (secondary),
    # since the released total (count = 30) minus 20 would give the 10 back
    config = NodeConfig(tmp_path / "node.toml", {"policy": {"min_cell_count": 11, "differencing_k": 0,
                                                           "allowed_analyses": ["crosstab"]}})
    r = _run(any_cdm, {"type": "crosstab", "by": ["mdm2"]}, config=config)
    cells = {tuple(c["key"]): c["n"] for c in r["result"]["cells"]}
    assert cells[(1.0,)] is None and cells[(0.0,)] is None
    assert sorted(r["result"]["suppressed"]) == [[0.0], [1.0]]
    refused = _run(any_cdm, {"type": "count"}, config=config)
    assert refused["code"] == "NOT_ALLOWED" and refused["result"] is None


def test_rate_limit(sqlite_cdm, tmp_path):
    _load(sqlite_cdm)
    config = NodeConfig(tmp_path / "node.toml", {"policy": {"max_requests_per_hour": 2}})
    codes = [_run(sqlite_cdm, {"type": "count"}, config=config)["code"] for _ in range(3)]
    assert codes == [None, None, "RATE_LIMIT"]
