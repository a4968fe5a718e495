"""The node's fast paths keep their semantics: the age criterion's integer form, the frame cache's
invalidation when the CDM changes, the compact released-set store (and upgrading an older state
database), the differencing shortcut for a repeated set, serialised check-and-record, the crosstab's
vectorised cell sets, and an audit log whose append reads only its tail."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, DateTime, BigInteger, Integer, LargeBinary, MetaData, String, Table, insert, select

from cdm import spec as S
from cdm.analyses.crosstab import bin_label
from cdm.compiler import fetch_rows
from cdm.db import open_engine
from cdm.schema import tables
from node import execute, state
from node.audit import AuditLog
from node.config import load_config
from node.execute import FRAMES, run_request
from node.disclosure.policy import Policy

D = dt.date
INDEX = {"index": {"kind": "condition", "codes": ["RADFED:progression"]}}


def write_config(tmp_path, extra: str = ""):
    path = tmp_path / "node.toml"
    path.write_text(f'[site]\nname = "site-a"\ndata_dir = "data"\n{extra}\n')
    return load_config(path)


def ask(engine, config, cohort, analysis=None, requester="r1", variables=None):
    return run_request(engine, config, {"request_id": "q", "requester": requester,
                                        "spec": {"cohort": cohort, "variables": variables or {},
                                                 "analysis": analysis or {"type": "count"}}})


def add_persons(engine, rows):
    """rows: (person_id, year, month, day, index date)."""
    with engine.begin() as c:
        c.execute(insert(tables["person"]), [dict(person_id=p, gender_concept_id=8507, year_of_birth=y,
                                                  month_of_birth=m, day_of_birth=d, race_concept_id=0,
                                                  ethnicity_concept_id=0) for p, y, m, d, _ in rows])
        c.execute(insert(tables["condition_occurrence"]), [dict(
            condition_occurrence_id=p, person_id=p, condition_concept_id=2000000400, condition_start_date=i,
            condition_type_concept_id=0) for p, _, _, _, i in rows])


def python_age(y, m, d, index: dt.date) -> int:
    return index.year - y - (((m or 1), (d or 1)) > (index.month, index.day))


# -- age at index ---------------------------------------------------------------------------------


def test_age_limits_equal_whole_years_at_the_index_date(any_cdm):
    """Birthdays on, before and after the index day, 29 February births in leap and common years, a
    missing month or day: ``age >= a`` / ``age <= b`` select exactly the persons whose whole years
    of age on the index date (the ``age`` variable's definition) are in range."""
    rnd = random.Random(7)
    rows = []
    special = [(2000, 2, 29, D(2018, 2, 28)), (2000, 2, 29, D(2018, 3, 1)), (2000, 2, 29, D(2020, 2, 29)),
               (2002, 6, 15, D(2020, 6, 15)), (2002, 6, 15, D(2020, 6, 14)), (2002, None, None, D(2020, 1, 1)),
               (2002, 12, None, D(2020, 12, 1)), (2002, 1, 1, D(2020, 1, 1)), (2002, 12, 31, D(2020, 12, 30))]
    for k, (y, m, d, i) in enumerate(special, start=1):
        rows.append((k, y, m, d, i))
    for k in range(len(special) + 1, 201):
        y = rnd.randint(1995, 2005)
        m = rnd.choice([None, *range(1, 13)])
        d = None if m is None or rnd.random() < 0.1 else rnd.randint(1, 28)
        rows.append((k, y, m, d, D(2020, 1, 1) + dt.timedelta(days=rnd.randint(0, 800))))
    add_persons(any_cdm, rows)
    ages = {p: python_age(y, m, d, i) for p, y, m, d, i in rows}
    # the age variable (the old per-part formula) agrees with Python ...
    got = ask(any_cdm, None, INDEX, {"type": "histogram", "variable": "age", "edges": [0, 100]},
              variables={"age": {"kind": "age"}})
    assert got["result"]["counts"] == [len(rows)]
    for low, high in [(18, None), (None, 18), (18, 18), (17, 19), (20, 21), (0, 15), (25, None)]:
        cohort = {**INDEX, "age": {k: v for k, v in (("min", low), ("max", high)) if v is not None}}
        expect = sum(1 for a in ages.values() if (low is None or a >= low) and (high is None or a <= high))
        r = ask(any_cdm, None, cohort)
        if expect < 5:  # below the minimum cell, zero included (issue 16): refused, whatever the count
            assert r["code"] == "MIN_CELL", (low, high, r)
            continue
        assert r["status"] == "ok", r
        assert r["result"]["n"] == expect, (low, high)
    # ... and so does the criterion nested in a boolean combination (the same expression)
    r = ask(any_cdm, None, {**INDEX, "inclusion": [{"not": {"kind": "age", "min": 19}}]})
    assert r["result"]["n"] == sum(1 for a in ages.values() if a < 19)


# -- frame cache ----------------------------------------------------------------------------------


def _new_engine(engine):
    """A second engine on the same database: another connection pool, as an ingest process has."""
    return open_engine(engine.url.render_as_string(hide_password=False))


def test_a_repeated_frame_is_reused_and_any_commit_invalidates_it(any_cdm, tmp_path):
    add_persons(any_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(1, 31)])
    config = write_config(tmp_path)
    FRAMES.clear()
    first = ask(any_cdm, config, INDEX)
    hits = FRAMES.hits
    second = ask(any_cdm, config, INDEX, requester="r2")
    assert first["result"] == second["result"] == {"n": 30}
    assert FRAMES.hits == hits + 1  # the CDM is unchanged: the frame was reused
    # an ingest elsewhere (its own engine and connection) commits 5 more persons
    other = _new_engine(any_cdm)
    add_persons(other, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(31, 36)])
    other.dispose()
    assert ask(any_cdm, config, INDEX, requester="r3")["result"] == {"n": 35}
    # a commit through the node's own engine (another pooled connection) invalidates it too
    add_persons(any_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(36, 46)])
    assert ask(any_cdm, config, INDEX, requester="r4")["result"] == {"n": 45}
    # a vocabulary change is a CDM change: nothing resolved earlier is kept either
    hits = FRAMES.hits
    assert ask(any_cdm, config, INDEX, requester="r5")["result"] == {"n": 45}
    assert FRAMES.hits == hits + 1


def test_the_cache_can_be_switched_off_in_node_toml(sqlite_cdm, tmp_path):
    add_persons(sqlite_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(1, 11)])
    config = write_config(tmp_path, "[query]\nframe_cache = false\n")
    FRAMES.clear()
    hits = FRAMES.hits
    for requester in ("a", "b", "c"):
        assert ask(sqlite_cdm, config, INDEX, requester=requester)["result"] == {"n": 10}
    assert FRAMES.hits == hits


def test_cached_frames_are_bounded_and_read_only(sqlite_cdm):
    add_persons(sqlite_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(1, 51)])
    cache, FRAMES.max_cells = FRAMES.max_cells, 120  # room for two 50-person count frames, not three
    try:
        FRAMES.clear()
        cohorts = [{**INDEX, "age": {"min": a}} for a in (10, 20, 30)]
        for c in cohorts:
            ask(sqlite_cdm, None, c)
        version = FRAMES.data_version(sqlite_cdm)
        keys = [execute._frame_key(S.parse_spec({"cohort": c, "analysis": {"type": "count"}}), [], "local")
                for c in cohorts]
        assert FRAMES.get(sqlite_cdm, keys[0], version) is None  # least recently used: evicted
        ids, values, _ = FRAMES.get(sqlite_cdm, keys[2], version)
        with pytest.raises(ValueError):
            ids[0] = -1
    finally:
        FRAMES.max_cells = cache
        FRAMES.clear()


def test_fetch_rows_gives_what_result_all_gives(any_cdm):
    add_persons(any_cdm, [(p, 1950 + p, 1, 1, D(2020, 1, p)) for p in range(1, 6)])
    from sqlalchemy import case, func, literal

    co = tables["condition_occurrence"]
    q = select(co.c.person_id, co.c.condition_start_date, func.avg(co.c.person_id), case((co.c.person_id > 2, 1.0), else_=0.0),
               literal("x")).group_by(co.c.person_id, co.c.condition_start_date).order_by(co.c.person_id)
    with any_cdm.connect() as conn:
        assert fetch_rows(conn, q) == [tuple(r) for r in conn.execute(q).all()]
        assert isinstance(fetch_rows(conn, q)[0][1], dt.date)


# -- released sets --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=(1 << 62) - 1), max_size=300))
def test_packed_sets_round_trip(ids):
    packed = state._pack(np.array(ids, dtype=np.int64))
    assert np.array_equal(state._unpack(packed), np.unique(np.array(ids, dtype=np.int64)))
    # the layout before this one (zlib of int64) is still read
    old = zlib.compress(np.unique(np.array(ids, dtype="<i8")).tobytes())
    assert np.array_equal(state._unpack(old), np.unique(np.array(ids, dtype=np.int64)))


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 400), max_size=200), st.sets(st.integers(0, 400), max_size=200))
def test_symmetric_difference_size(a, b):
    x, y = (np.array(sorted(s), dtype=np.int64) for s in (a, b))
    assert state.symmetric_difference_size(x, y) == len(a ^ b)


def test_an_older_state_database_is_upgraded_and_keeps_defending(sqlite_cdm, tmp_path):
    """A state database written before the digest column: its released sets still count."""
    add_persons(sqlite_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(1, 41)])
    url = str(tmp_path / "old-state.sqlite")
    old = MetaData()
    old_released = Table("released_cohort", old, Column("id", Integer, primary_key=True, autoincrement=True),
                         Column("requester", String(255), nullable=False, index=True),
                         Column("cohort_hash", String(64), nullable=False),
                         Column("n", BigInteger, nullable=False, index=True),
                         Column("person_ids", LargeBinary, nullable=False),
                         Column("released_at", DateTime, nullable=False))
    Table("released_cell", old, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("requester", String(255), nullable=False), Column("request_id", String(64)),
          Column("hidden", __import__("sqlalchemy").Boolean, nullable=False), Column("n", BigInteger, nullable=False),
          Column("person_ids", LargeBinary, nullable=False), Column("released_at", DateTime, nullable=False))
    engine = open_engine(url)
    old.create_all(engine)
    with engine.begin() as c:  # persons 1..40 were released to r1 by the earlier version
        c.execute(insert(old_released).values(requester="r1", cohort_hash="x", n=40, released_at=state.utcnow(),
                                              person_ids=zlib.compress(np.arange(1, 41, dtype="<i8").tobytes())))
    engine.dispose()
    config = write_config(tmp_path, f'[state]\nurl = "{url}"\n[policy]\ndifferencing_k = 5\n')
    with state.state_engine(config).connect() as c:  # upgraded in place: digest added and filled
        digest = c.execute(select(state.released.c.digest)).scalar_one()
    assert digest == state.set_digest(np.arange(1, 41))
    # the same 40 again: recognised by its digest, released
    assert ask(sqlite_cdm, config, INDEX)["result"] == {"n": 40}
    add_persons(sqlite_cdm, [(41, 1961, 1, 1, D(2020, 1, 1))])
    r = ask(sqlite_cdm, config, INDEX)  # 41 persons: one away from what the old version released
    assert r["status"] == "refused" and r["code"] == "DIFFERENCING"


def test_a_repeated_set_is_released_once_and_a_near_one_still_refused(sqlite_cdm, tmp_path):
    add_persons(sqlite_cdm, [(p, 1960 + p % 20, 1, 1, D(2020, 1, 1)) for p in range(1, 41)])
    config = write_config(tmp_path, "[policy]\ndifferencing_k = 5\n")
    for _ in range(3):
        assert ask(sqlite_cdm, config, INDEX)["result"] == {"n": 40}
    engine = state.state_engine(config)
    with engine.connect() as c:
        assert c.execute(select(state.released.c.n)).scalars().all() == [40]  # stored once
        assert c.execute(select(state.released_cells.c.n)).scalars().all() == [40]
    # 38 of the same 40 persons (aged 41, i.e. p % 20 == 19: persons 19 and 39 left out)
    near = {**INDEX, "age": {"min": 42}}
    r = ask(sqlite_cdm, config, near)
    assert r["status"] == "refused" and r["code"] == "DIFFERENCING"


def test_concurrent_near_cohorts_cannot_both_pass(sqlite_cdm, tmp_path):
    """Eight threads, eight cohorts each within 10 of every other: exactly one is released."""
    add_persons(sqlite_cdm, [(p, 1900 + p, 1, 1, D(2020, 1, 1)) for p in range(1, 61)])
    config = write_config(tmp_path, "[policy]\ndifferencing_k = 10\n")
    results = []
    barrier = threading.Barrier(8)

    def one(k):
        barrier.wait()
        # ages are 60..119, so age <= 119 - k keeps 60 - k persons: any two sets differ by 1..7
        results.append(ask(sqlite_cdm, config, {**INDEX, "age": {"max": 119 - k}}))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = Counter(r["code"] for r in results)
    assert codes == {None: 1, "DIFFERENCING": 7}, codes


# -- crosstab cells -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_crosstab_counts_and_cell_sets_match_a_plain_count(data):
    n = data.draw(st.integers(0, 60))
    sex = data.draw(st.lists(st.sampled_from(["M", "F", None]), min_size=n, max_size=n))
    tf = data.draw(st.lists(st.one_of(st.none(), st.floats(-2, 12, allow_nan=False)), min_size=n, max_size=n))
    spec = S.parse_spec({"cohort": {}, "variables": {"sex": {"kind": "sex"}, "tf": {"kind": "age"}},
                         "analysis": {"type": "crosstab", "by": ["sex", "tf"], "bins": {"tf": [0, 4, 10]}}})
    values = {"sex": tuple(sex), "tf": tuple(tf)}
    ids = np.arange(100, 100 + n, dtype=np.int64)
    policy = Policy(min_cell_count=1)
    result = execute.analyse(spec, n, values, policy)
    edges = spec.analysis.bins["tf"]
    plain = Counter((s, bin_label(t, edges)) for s, t in zip(sex, tf) if s is not None and t is not None)
    cells = {tuple(c["key"]): c["n"] for c in result["cells"]}
    # every category the spec defines is listed (sex F/M/O x below, 2 bins, above), present or not;
    # an empty one reads like a small one (null)
    assert len(cells) == 3 * 4 and {k: n for k, n in cells.items() if n is not None} == plain
    shown, hidden = execute._cell_sets(spec, ids, values, result)
    assert all(h.size == 0 for h in hidden)
    expect = {k: sorted(int(i) for i, s, t in zip(ids, sex, tf) if s is not None and t is not None
                        and (s, bin_label(t, edges)) == k) for k in plain}
    assert sorted(sorted(x.tolist()) for x in shown) == sorted(
        expect[tuple(c["key"])] for c in result["cells"] if c["n"] is not None)


# -- audit log ------------------------------------------------------------------------------------


def test_audit_append_reads_the_tail_and_the_chain_still_verifies(tmp_path):
    log = AuditLog(tmp_path)
    big = "x" * 20_000  # longer than one read block
    for i in range(30):
        log.append(request_id=str(i), requester="r", released={"note": big if i % 7 == 0 else i})
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(1, 31))
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert log.verify() == []
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:10] + lines[11:]) + "\n")  # remove one entry
    assert any("removed" in p for p in log.verify())
    assert json.loads(log.head.read_text())["seq"] == 30


# -- unknown codes --------------------------------------------------------------------------------


def test_unknown_codes_warn_by_default_and_refuse_when_the_spec_is_strict(sqlite_cdm, tmp_path):
    add_persons(sqlite_cdm, [(p, 1960, 1, 1, D(2020, 1, 1)) for p in range(1, 31)])
    config = write_config(tmp_path)
    unknown_exclusion = {**INDEX, "exclusion": [{"kind": "condition", "codes": ["SNOMED:999999999"]}]}
    r = ask(sqlite_cdm, config, unknown_exclusion)
    assert r["status"] == "ok" and r["result"] == {"n": 30}
    assert r["warnings"] == ["UNKNOWN_CODE SNOMED:999999999: not in this node's vocabulary"]
    # a Cox round reads its covariates from frames of its own; their unknown codes are still reported
    cox = {"type": "cox_round", "time": {"event": {"kind": "death"}}, "covariates": ["x"], "beta": [0.0]}
    r = ask(sqlite_cdm, config, INDEX, cox, variables={"x": {"kind": "measurement", "code": "LOINC:0000-0"}})
    assert "UNKNOWN_CODE LOINC:0000-0: not in this node's vocabulary" in r["warnings"], r
    # strict: the node will not answer a different question than the one asked
    strict = run_request(sqlite_cdm, config, {"request_id": "s", "requester": "r9", "spec": {
        "cohort": unknown_exclusion, "analysis": {"type": "count"}, "unknown_codes": "refuse"}})
    assert strict["status"] == "refused" and strict["code"] == "UNKNOWN_CODE" and strict["result"] is None
    assert "SNOMED:999999999" in strict["message"]
    assert AuditLog.for_config(config).entries()[-1]["code"] == "UNKNOWN_CODE"
    # every code known: strict changes nothing
    ok = run_request(sqlite_cdm, config, {"request_id": "t", "requester": "r9", "spec": {
        "cohort": INDEX, "analysis": {"type": "count"}, "unknown_codes": "refuse"}})
    assert ok["result"] == {"n": 30} and ok["warnings"] == [], ok
    # the option leaves the hash of specs without it as it was
    plain = S.parse_spec({"cohort": INDEX, "analysis": {"type": "count"}})
    assert S.spec_hash(plain) == S.spec_hash(S.parse_spec({"cohort": INDEX, "analysis": {"type": "count"},
                                                           "unknown_codes": "warn"}))
    assert S.spec_hash(plain) != S.spec_hash(S.parse_spec({"cohort": INDEX, "analysis": {"type": "count"},
                                                           "unknown_codes": "refuse"}))


# -- parameter limits in the allowlist ------------------------------------------------------------


def test_allowlist_entries_carry_parameter_limits(sqlite_cdm, tmp_path):
    add_persons(sqlite_cdm, [(p, 1950 + p % 40, 1, 1, D(2020, 1, 1)) for p in range(1, 61)])
    config = write_config(tmp_path, '[policy]\nallowed_analyses = ["count", '
                                    '{type = "histogram", max_bins = 3}, {type = "quantile_round", max_thresholds = 2}, '
                                    '{type = "crosstab", max_variables = 1, max_bins = 2}, '
                                    '{type = "cox_round", modes = ["stratified"]}]\n')
    variables = {"age": {"kind": "age"}, "sex": {"kind": "sex"}}
    hist = {"type": "histogram", "variable": "age", "edges": [0, 40, 60, 80]}
    assert ask(sqlite_cdm, config, INDEX, hist, variables=variables)["status"] == "ok"
    r = ask(sqlite_cdm, config, INDEX, {**hist, "edges": [0, 40, 50, 60, 80]}, requester="r2", variables=variables)
    assert r["status"] == "refused" and r["code"] == "NOT_ALLOWED" and r["result"] is None
    assert "4 bins, more than 3" in r["message"] and "max_bins" in r["message"]
    q = {"type": "quantile_round", "variable": "age", "thresholds": [50, 60, 70]}
    assert ask(sqlite_cdm, config, INDEX, q, variables=variables)["code"] == "NOT_ALLOWED"
    two = {"type": "crosstab", "by": ["sex", "age"], "bins": {"age": [0, 60, 100]}}
    assert "2 variables, more than 1" in ask(sqlite_cdm, config, INDEX, two, variables=variables)["message"]
    cox = {"type": "cox_round", "time": {"event": {"kind": "death"}}, "covariates": ["age"], "beta": [0.0],
           "mode": "pooled"}
    assert "mode 'pooled'" in ask(sqlite_cdm, config, INDEX, cox, variables=variables)["message"]
    assert ask(sqlite_cdm, config, INDEX, {"type": "summary", "variables": ["age"]}, variables=variables)["code"] \
        == "NOT_ALLOWED"  # not listed at all
    assert ask(sqlite_cdm, config, INDEX)["result"] == {"n": 60}
    # a misspelt limit, an unknown type or a wrong value is a configuration error, never a lifted limit
    from click.testing import CliRunner
    from node.cli import main

    bad_entries = ('{type = "histogram", max_bin = 3}', '{type = "histgram"}', '{type = "histogram", max_bins = "3"}')
    for k, bad in enumerate(bad_entries):
        (tmp_path / f"bad{k}").mkdir()
        broken = write_config(tmp_path / f"bad{k}", f"[policy]\nallowed_analyses = [{bad}]\n")
        r = ask(sqlite_cdm, broken, INDEX, hist, variables=variables)
        assert r["status"] == "error" and "configuration is invalid" in r["message"], r
        done = CliRunner().invoke(main, ["--config", str(broken.path), "config", "check"])
        assert done.exit_code == 1 and "allowed_analyses" in done.output
