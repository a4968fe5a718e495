"""Quorum and durable delivery through real processes (nats-server with JetStream, `radfed
coordinator serve`, `radfed-node serve`): a met quorum gives a partial result that says which sites
answered, an unmet one fails without pooling; a request queued for an offline site is withdrawn when
its hold expires, and a coordinator restart neither loses a queued job nor delivers it twice."""

from __future__ import annotations

import datetime as dt
import signal
import time

from sqlalchemy import insert

from cdm.schema import metadata
from federation import Network
from node.audit import AuditLog
from node.config import load_config

COUNT = {"cohort": {}, "analysis": {"type": "count"}}
PERSONS = {"site-a": 11, "site-b": 12, "site-c": 13}


def fill(engine, site):
    base = {"site-a": 100, "site-b": 200, "site-c": 300}[site]
    with engine.begin() as conn:
        conn.execute(insert(metadata.tables["person"]), [
            {"person_id": i, "gender_concept_id": 8507, "year_of_birth": 1960, "race_concept_id": 0,
             "ethnicity_concept_id": 0} for i in range(base, base + PERSONS[site])])
        conn.execute(insert(metadata.tables["observation_period"]), [
            {"observation_period_id": i, "person_id": i, "observation_period_start_date": dt.date(2015, 1, 1),
             "observation_period_end_date": dt.date(2024, 1, 1), "period_type_concept_id": 32817}
            for i in range(base, base + PERSONS[site])])


def audit_entries(net: Network, site: str) -> list[dict]:
    return AuditLog.for_config(load_config(net.bundles[site].node_toml)).entries()


def test_quorum_met_is_partial_and_names_who_answered_unmet_fails(tmp_path):
    net = Network.started(tmp_path, list(PERSONS), fill)
    try:
        net.stop_node("site-c")
        job = net.run(COUNT, quorum=2, timeout=10)
        assert job["status"] == "partial", job
        assert "2 of 3 sites answered" in job["message"] and "site-c (offline)" in job["message"]
        assert job["pooled"]["sites"] == ["site-a", "site-b"]
        assert job["pooled"]["rows"][0]["pooled"]["n"] == PERSONS["site-a"] + PERSONS["site-b"]
        per_site = {s["site"]: s["status"] for s in job["per_site"]}
        assert per_site == {"site-a": "ok", "site-b": "ok", "site-c": "offline"}

        job = net.run(COUNT, quorum=3, timeout=10)
        assert job["status"] == "failed" and job["pooled"] is None, job
        assert "quorum is 3" in job["message"] and "site-c (offline)" in job["message"]

        # the quorum can ride in the spec itself (federation options), as the CLI sends it
        job = net.run({**COUNT, "federation": {"quorum": 3, "timeout": 10}})
        assert job["status"] == "failed" and job["quorum"] == 3
    finally:
        net.close()


def test_a_queued_request_is_withdrawn_when_its_hold_expires(tmp_path):
    net = Network(tmp_path, ["site-a", "site-b"], jetstream=True)
    for site in net.site_names:
        net.make_cdm(site, lambda engine, s: fill(engine, "site-a"))
    try:
        net.start_coordinator()
        net.start_node("site-a")
        job = net.run(COUNT, hold_offline=2, timeout=10)
        assert job["status"] == "partial" and "site-b (offline)" in job["message"], job
        assert "withdrew the request queued for site-b" in (net.root / "coordinator.log").read_text()
        net.start_node("site-b", wait=False)
        net.wait_online(["site-b"])
        time.sleep(3 * net.heartbeat + 1)  # more than one pull of its queue
        assert "answered queued request" not in (net.root / "site-b.log").read_text()
        assert audit_entries(net, "site-b") == []  # it never ran the request nobody waits for
    finally:
        net.close()


def test_coordinator_restart_keeps_a_queued_job_and_delivers_it_once(tmp_path):
    net = Network(tmp_path, ["site-a", "site-b"], jetstream=True)
    for site in net.site_names:
        net.make_cdm(site, fill)
    try:
        net.start_coordinator()
        net.start_node("site-a")
        job_id = net.submit(COUNT, hold_offline=120, timeout=20, wait=2)
        assert net.per_site(job_id)[1]["site-b"]["status"] == "waiting"
        net.stop_coordinator(signal.SIGKILL)   # crash with site-b's request in the durable queue
        net.start_coordinator()
        log = (net.root / "coordinator.log").read_text()
        assert "re-dispatching 1 unfinished job" in log and "dropped 1 request(s) queued before the restart" in log
        net.start_node("site-b", wait=False)   # comes back after the restart: pulls its queue
        job = net.per_site(job_id, wait=90)[0]
        assert job["status"] == "done", job
        assert job["pooled"]["rows"][0]["pooled"]["n"] == PERSONS["site-a"] + PERSONS["site-b"]
        time.sleep(3 * net.heartbeat + 1)
        answered = [e for e in audit_entries(net, "site-b") if e["decision"] == "ok"]
        assert len(answered) == 1, answered   # the pre-restart copy was dropped, not run as well
    finally:
        net.close()
