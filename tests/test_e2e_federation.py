"""End to end across three real node processes: nats-server, `radfed coordinator serve`, three
`radfed-node serve` agents, each with its own SQLite CDM, queried through the HTTP API and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import insert

from cdm.schema import metadata
from cdm.vocabulary import Vocabulary
from federation import network_fixture

BIN = Path(sys.executable).parent
SITES = {"site-a": 40, "site-b": 23, "site-c": 3}   # site-c is below the default minimum cell count (5)
CODE = "443487006"  # the cohort's index condition (SNOMED)


def fill(engine, site: str) -> None:
    """SITES[site] persons with the index condition, alternating sex, ages spread; plus 5 without it."""
    n = SITES[site]
    base = {"site-a": 1_000, "site-b": 2_000, "site-c": 3_000}[site]
    concept = Vocabulary(engine).concept_for("SNOMED", CODE, "index condition", "Condition").concept_id
    other = Vocabulary(engine).concept_for("SNOMED", "254637007", "other condition", "Condition").concept_id
    people = range(base, base + n + 5)
    with engine.begin() as conn:
        conn.execute(insert(metadata.tables["person"]), [
            {"person_id": i, "gender_concept_id": 8507 if i % 2 else 8532, "year_of_birth": 1950 + (i % 40),
             "month_of_birth": 6, "day_of_birth": 1, "race_concept_id": 0, "ethnicity_concept_id": 0} for i in people])
        conn.execute(insert(metadata.tables["observation_period"]), [
            {"observation_period_id": i, "person_id": i, "observation_period_start_date": dt.date(2010, 1, 1),
             "observation_period_end_date": dt.date(2024, 12, 31), "period_type_concept_id": 32817} for i in people])
        conn.execute(insert(metadata.tables["condition_occurrence"]), [
            {"condition_occurrence_id": i, "person_id": i, "condition_concept_id": concept if i < base + n else other,
             "condition_start_date": dt.date(2020, 1 + i % 12, 1 + i % 28), "condition_type_concept_id": 32817}
            for i in people])


def expected_sex(site: str) -> dict[str, int]:
    base = {"site-a": 1_000, "site-b": 2_000, "site-c": 3_000}[site]
    ids = range(base, base + SITES[site])
    return {"M": sum(1 for i in ids if i % 2), "F": sum(1 for i in ids if not i % 2)}


COHORT = {"index": {"kind": "condition", "codes": [f"SNOMED:{CODE}"]}}
COUNT = {"cohort": COHORT, "analysis": {"type": "count"}}
BY_SEX = {"cohort": COHORT, "variables": {"sex": {"kind": "sex"}}, "analysis": {"type": "crosstab", "by": ["sex"]}}
AGE = {"cohort": COHORT, "variables": {"age": {"kind": "age"}}, "analysis": {"type": "summary", "variables": ["age"]}}


network = network_fixture("e2e", SITES, fill)


ANSWERED = ("ok", "refused", "error")   # a signed, verified answer from the node's execution layer


def test_three_real_nodes_answer_signed_through_api_and_cli(network, tmp_path):
    job = network.run(COUNT)
    per_site = {s["site"]: s for s in job["per_site"]}
    assert set(per_site) == set(SITES)
    assert all(s["status"] in ANSWERED for s in per_site.values()), per_site
    assert job["provenance"]["spec_hash"] and job["provenance"]["sites_asked"] == sorted(SITES)
    assert set(job["provenance"]["verified_with"]) == set(SITES)
    # the researcher CLI shows the same job, per site, and lists it
    spec = tmp_path / "count.json"
    spec.write_text(json.dumps(COUNT))
    run = subprocess.run([str(BIN / "radfed"), "query", "run", str(spec)], capture_output=True, text=True,
                         env=network.env(), timeout=120)
    assert "Traceback" not in run.stderr and all(site in run.stdout for site in SITES), run.stdout + run.stderr
    listed = subprocess.run([str(BIN / "radfed"), "jobs"], capture_output=True, text=True, env=network.env(), timeout=60)
    assert job["job_id"] in listed.stdout
    shown = subprocess.run([str(BIN / "radfed"), "sites"], capture_output=True, text=True, env=network.env(), timeout=60)
    assert all(f"{site}  online" in shown.stdout for site in SITES), shown.stdout


def test_node_killed_mid_query_gives_a_partial_result_naming_it(network):
    victim = network.nodes["site-b"]
    victim.send_signal(signal.SIGSTOP)                       # site-b has the request and never answers...
    try:
        submitted = network.call("POST", "/v1/jobs", json={"spec": COUNT, "timeout": 4, "quorum": 2})
        assert submitted.status_code == 202
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)                   # ...and dies mid-query
        victim.wait(10)
        job = network.call("GET", f"/v1/jobs/{submitted.json()['job_id']}", params={"wait": 30}).json()
    finally:
        if victim.poll() is None:
            victim.kill()
    per_site = {s["site"]: s["status"] for s in job["per_site"]}
    assert per_site["site-b"] == "timeout" and "site-b (timeout)" in job["message"], job
    assert per_site["site-a"] in ANSWERED and per_site["site-c"] in ANSWERED
    assert job["status"] in ("partial", "failed") and job["status"] != "done"

    # the site is now down: the next job knows at once (no waiting for a timeout), naming it
    started = time.monotonic()
    job = network.run(COUNT, timeout=30)
    assert time.monotonic() - started < 10
    assert "site-b (offline)" in job["message"] and job["status"] != "done"
    sites = {s["site"]: s for s in network.call("GET", "/v1/sites").json()["sites"]}
    assert sites["site-a"]["online"] and sites["site-a"]["version"]

    network.start_node("site-b")                             # back again: every site answers
    job = network.run(COUNT)
    assert all(s["status"] in ANSWERED for s in job["per_site"]), job
