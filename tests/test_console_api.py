"""The console's access rules, the coordinator audit, spec validation and the text/CSV results,
without a bus: the FastAPI app in-process (the browser tests in test_console.py use a real network)."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text, update

from coordinator.api import create_app
from coordinator.api_specs import SpecText, check
from coordinator.home import CoordinatorHome
from coordinator.report import render_job
from coordinator.results import job_csv, result_tables
from coordinator.service import Coordinator
from coordinator.store import AuthError, Store, audit, utcnow


@pytest.fixture
def home(tmp_path):
    return CoordinatorHome(tmp_path / "coord").init()


@pytest.fixture
def app(home):
    return TestClient(create_app(Coordinator(home), manage_lifecycle=False))


def signed_in(app, token: str) -> TestClient:
    response = app.post("/console/sign-in", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return app


def test_tokens_expire_are_revoked_and_sessions_end_with_them(home):
    store = home.store
    token = store.add_researcher("alice", "researcher", utcnow() + dt.timedelta(days=1))
    session, who = store.open_session(token, dt.timedelta(hours=12))
    assert who["name"] == "alice" and store.session_researcher(session)["name"] == "alice"
    with store.engine.begin() as conn:  # a day passes
        conn.execute(update(store_researchers()).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    with pytest.raises(AuthError, match="token expired"):
        store.authenticate(token)
    with pytest.raises(AuthError, match="token expired"):
        store.session_researcher(session)

    fresh = store.add_researcher("bob")
    session, _ = store.open_session(fresh, dt.timedelta(hours=12))
    store.revoke_researcher("bob")
    for check_ in (lambda: store.authenticate(fresh), lambda: store.session_researcher(session)):
        with pytest.raises(AuthError):
            check_()
    again = store.add_researcher("bob")  # a revoked name gets a new token; the old one stays dead
    assert store.authenticate(again)["name"] == "bob" and store.researcher_for_token(fresh) is None
    with pytest.raises(AuthError, match="unknown or revoked"):
        store.open_session("rf_guess", dt.timedelta(hours=1))


def store_researchers():
    from coordinator.store import researchers

    return researchers


def test_an_older_store_gains_the_expiry_column(tmp_path):
    path = tmp_path / "old.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # coord_researcher as released before tokens could expire
        conn.execute(text("CREATE TABLE coord_researcher (name VARCHAR(120) PRIMARY KEY, token_hash VARCHAR(64) "
                          "NOT NULL UNIQUE, role VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL, "
                          "state VARCHAR(16) NOT NULL)"))
    store = Store(path)
    token = store.add_researcher("alice", "admin", utcnow() + dt.timedelta(days=2))
    assert store.authenticate(token)["expires_at"] > utcnow()


def test_the_audit_chain_shows_an_edit_and_a_removal(home):
    store = home.store
    for i in range(4):
        store.audit("alice", "job.submit", "ok", f"job-{i}", "km")
    assert store.verify_audit() == []
    with store.engine.begin() as conn:
        conn.execute(update(audit).where(audit.c.seq == 2).values(detail="cox"))
    assert any("entry 2" in p and "edited" in p for p in store.verify_audit())
    with store.engine.begin() as conn:
        conn.execute(update(audit).where(audit.c.seq == 2).values(detail="km"))
        conn.execute(audit.delete().where(audit.c.seq == 3))
    assert any("entry 4" in p and "removed" in p for p in store.verify_audit())


def test_console_access_rules(home, app):
    researcher = home.store.add_researcher("alice")
    admin = home.store.add_researcher("root", "admin")
    assert app.get("/console/jobs", follow_redirects=False).headers["location"].startswith("/console/sign-in")
    refused = app.post("/console/sign-in", data={"token": "rf_nope"})
    assert refused.status_code == 401 and "unknown or revoked token" in refused.text
    # an open redirect through ?next= is not possible
    response = app.post("/console/sign-in", data={"token": researcher, "next": "https://evil.example/"},
                        follow_redirects=False)
    assert response.headers["location"] == "/console/jobs"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # with the cookie alone, a call that changes something needs the console's header (CSRF)
    assert app.post("/v1/specs/validate", json={"text": "analysis: {type: count}"}).status_code == 401
    assert app.post("/v1/specs/validate", json={"text": "analysis: {type: count}"},
                    headers={"X-Radfed-Console": "1"}).json()["valid"]
    assert app.get("/console/operator/audit").status_code == 403
    assert app.post("/v1/researchers", json={"name": "eve"}, headers={"X-Radfed-Console": "1"}).status_code == 403
    # the operator adds, enrols and reads the audit through the same API
    app.cookies.clear()
    operator = TestClient(app.app, headers={"Authorization": f"Bearer {admin}"})
    made = operator.post("/v1/researchers", json={"name": "carol", "expires_in_days": 1}).json()
    assert made["token"].startswith("rf_") and made["expires_at"]
    bundle = operator.post("/v1/sites", json={"name": "site-z"})
    assert bundle.headers["content-type"] == "application/zip"
    assert "site-z/node.toml" in zipfile.ZipFile(io.BytesIO(bundle.content)).namelist()
    assert operator.post("/v1/sites", json={"name": "bad name!"}).status_code == 400
    entries = operator.get("/v1/audit").json()
    actions = [(e["actor"], e["action"], e["outcome"]) for e in entries["entries"]]
    assert ("alice", "operator.refused", "refused") in actions and ("root", "site.enrol", "ok") in actions
    assert ("-", "console.sign_in", "refused") in actions and entries["intact"]
    signed_in(app, admin)
    assert app.get("/console/operator/audit").status_code == 200


@pytest.mark.parametrize("text, line, path, message", [
    ("cohort: {}\nanalysis:\n  type: crosstab\n  by: [sexx]\n", 4, "analysis.by[0]", "unknown variable 'sexx'"),
    ("analysis:\n  type: km\n  time: {event: {kind: death}}\n  bin_days: -3\n", 4, "analysis.bin_days", "greater than"),
    ("cohort:\n  inclusion:\n    - {kind: condition, codes: [SNOMED443]}\n", 3, "cohort.inclusion[0].codes[0]", "SYSTEM:code"),
    ("cohort: [\n", 2, "", "not valid YAML"),
    ('{"analysis": {"type": "count"}, "federation": {"quorom": 2}}', 1, "federation", "unknown option"),
])
def test_validation_names_the_line_and_field(text, line, path, message):
    result = check(SpecText(text=text))
    assert not result["valid"]
    assert any(p["line"] == line and p["path"] == path and message in p["message"] for p in result["problems"]), result


KM_JOB = {
    "job_id": "0123456789ab", "status": "partial", "message": "partial: 2 of 3 sites answered",
    "spec": {"analysis": {"type": "km"}},
    "per_site": [{"site": "a", "status": "ok", "elapsed_ms": 5.0}, {"site": "b", "status": "ok", "elapsed_ms": 6.0},
                 {"site": "c", "status": "refused", "code": "NOT_ALLOWED", "message": "analysis 'km_round' is not allowed"}],
    "pooled": {"type": "km", "group": None, "bin_days": 30, "sites": ["a", "b"], "rounds": 1,
               "groups": {"all": {"times": [30.0, 12030.0], "at_risk": [20, 10], "events": [10, 0], "censored": [0, 10],
                                  "survival": [0.5, 0.5], "ci_lower_95": [0.27, 0.27], "ci_upper_95": [0.69, 0.69],
                                  "median": 30.0, "n": 20, "complete": True, "suppressed_at": []}},
               "logrank": None},
}


def test_km_text_shows_the_survival_table_and_every_site():
    shown = render_job(KM_JOB)
    assert "c     refused" in shown and "NOT_ALLOWED analysis 'km_round' is not allowed" in shown
    table = shown[shown.index("Kaplan-Meier survival table"):].splitlines()
    assert table[1].split() == ["source", "group", "time", "at_risk", "events", "censored", "survival",
                                "ci_lower_95", "ci_upper_95", "coarsened"]
    assert table[3].split() == ["pooled", "all", "30", "20", "10", "0", "0.5", "0.27", "0.69", "-"]
    assert table[4].split()[2] == "12,030"  # a time is printed whole, never as 1.203e+04
    lines = job_csv(KM_JOB).splitlines()
    assert lines[0] == "source,group,time,at_risk,events,censored,survival,ci_lower_95,ci_upper_95,coarsened,status,note"
    assert lines[1] == "pooled,all,30.0,20,10,0,0.5,0.27,0.69,,ok,"
    assert lines[-1] == "c,,,,,,,,,,refused,NOT_ALLOWED analysis 'km_round' is not allowed"
    assert [t.name for t in result_tables(KM_JOB)] == ["survival", "groups"]


def test_a_crosstab_is_a_heat_map_with_suppressed_and_lower_bound_cells():
    import json

    from cdm.analyses.crosstab import pool_table
    from coordinator.console.figures import figure_for

    pooled = pool_table({"a": {"cells": [{"key": ["F", "<60"], "n": 12}, {"key": ["F", ">=60"], "n": None},
                                         {"key": ["M", "<60"], "n": 7}, {"key": ["M", ">=60"], "n": 9}]},
                         "b": {"cells": [{"key": ["F", "<60"], "n": 5}, {"key": ["F", ">=60"], "n": 8},
                                         {"key": ["M", "<60"], "n": None}, {"key": ["M", ">=60"], "n": None}]}},
                        ["sex", "age"])
    figure = json.loads(figure_for({"job_id": "0123456789ab", "pooled": pooled}))
    heat = figure["data"][0]
    assert heat["type"] == "heatmap" and heat["y"] == ["F", "M"] and heat["x"] == ["<60", ">=60"]
    assert heat["text"] == [["17", ">=8"], [">=7", ">=9"]]  # a suppressed share is never a 0: lower bounds
    one_way = pool_table({"a": {"cells": [{"key": ["F"], "n": None}, {"key": ["M"], "n": 9}]}}, ["sex"])
    bars = json.loads(figure_for({"job_id": "0123456789ab", "pooled": one_way}))["data"]
    assert [b["type"] for b in bars] == ["bar", "bar"] and bars[1]["text"] == ["suppressed", "9"]


def test_operator_api_statuses_come_from_the_errors(home, app):
    """The operator API answers with the status declared on the error (cdm.errors.http_status_of): a
    name that is not there is 404 (coordinator.store.NotFound), a name that exists already is 400."""
    admin = home.store.add_researcher("root", "admin")
    auth = {"Authorization": f"Bearer {admin}"}
    assert app.delete("/v1/sites/nowhere", headers=auth).status_code == 404
    assert app.delete("/v1/researchers/nobody", headers=auth).status_code == 404
    assert app.post("/v1/researchers", json={"name": "root"}, headers=auth).status_code == 400
    assert app.post("/v1/researchers", json={"name": "bob"}, headers=auth).status_code == 200
    assert app.delete("/v1/researchers/bob", headers=auth).status_code == 200
    assert app.delete("/v1/researchers/bob", headers=auth).status_code == 404  # revoked: no longer active


def test_spec_and_atlas_routes_need_a_caller(home, app):
    """/v1/specs/* and /v1/atlas/* declare their caller once, on the router: none answers without a token."""
    for method, path in (("GET", "/v1/specs/schema"), ("GET", "/v1/specs/examples"), ("POST", "/v1/specs/validate"),
                         ("POST", "/v1/specs/plan"), ("POST", "/v1/atlas/translate"), ("POST", "/v1/atlas/jobs")):
        assert app.request(method, path, json={}).status_code == 401, path
    token = home.store.add_researcher("alice")
    answer = app.get("/v1/specs/examples", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["examples"]
