"""The typed records at the boundaries (cdm/records.py): a request a node receives, a reply a
coordinator receives, a job the store loads.  They check the shape and never rewrite the record: the
signed bytes are the same canonical JSON as before."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import update

from cdm import wire
from cdm.records import JobRecord, SiteRequest, SiteResponse, ValidationError
from coordinator.home import CoordinatorHome
from coordinator.store import StoreError, jobs

SPEC = {"analysis": {"type": "count"}}


def test_the_records_radfed_makes_are_valid_and_their_bytes_are_the_canonical_json():
    request = wire.make_request(SPEC, "alice", "job-1", "req-1", site="site-a", now=1_700_000_000.0, ttl=60)
    request["nonce"] = "0" * 32  # the one random field, fixed to compare bytes
    SiteRequest.model_validate(request)
    # what is signed is the record's canonical JSON, byte for byte (sorted keys, no whitespace)
    assert wire.canonical(request) == (
        b'{"expires_at":1700000060.0,"issued_at":1700000000.0,"job_id":"job-1","nonce":"' + b"0" * 32
        + b'","request_id":"req-1","requester":"alice","site":"site-a","spec":{"analysis":{"type":"count"}}}')
    response = wire.make_response(request, "site-a", "refused", "MIN_CELL", "fewer than 5")
    assert SiteResponse.model_validate(response).code == "MIN_CELL"
    key = wire.generate_key()
    sealed = wire.Signer("site-a", key).seal(response)
    assert wire.verify(sealed, "site-a", wire.public_key_text(key)) == response  # nothing added or coerced


@pytest.mark.parametrize("bad", [
    {"request_id": "r"},                                   # no spec
    {"request_id": "r", "spec": SPEC, "plan": SPEC},        # both a run and a dry run
    {"request_id": 7, "spec": SPEC},                        # not a name
    {"request_id": "r", "spec": [SPEC]},                    # not an object
    {"request_id": "r", "spec": SPEC, "requester": 1},
])
def test_a_malformed_request_is_rejected(bad):
    with pytest.raises(ValidationError):
        SiteRequest.model_validate(bad)


def test_a_reply_with_an_unknown_status_or_undeclared_code_is_rejected_by_the_coordinator():
    request = wire.make_request(SPEC, "alice", site="site-a")
    for status, code in (("okay", None), ("refused", "MIN_CEL"), ("refused", 3)):
        reply = wire.make_response(request, "site-a", status, code, "x")
        with pytest.raises(wire.WireError, match="response is malformed"):
            wire.check_response(reply, request["request_id"], "site-a")
    bad_result = {**wire.make_response(request, "site-a", "ok"), "result": [1, 2]}
    with pytest.raises(wire.WireError, match="result"):
        wire.check_response(bad_result, request["request_id"], "site-a")


def test_the_store_loads_a_typed_job_and_refuses_a_damaged_one(tmp_path):
    store = CoordinatorHome(tmp_path / "coord").init().store
    spec_hash = hashlib.sha256(b"x").hexdigest()
    job_id = store.create_job("alice", SPEC, spec_hash, ["site-a", "site-b"], 2, 30.0)
    store.start_job(job_id, {"site-a": "r1", "site-b": "r2"})
    store.record_site(job_id, "site-a", "refused", "MIN_CELL", "fewer than 5", None, 12.5)
    job = store.job(job_id)
    typed = JobRecord.model_validate(job)
    assert typed.status == "running" and [s.status for s in typed.per_site] == ["refused", "pending"]
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(status="finished-ish"))
    with pytest.raises(StoreError, match="damaged.*status"):
        store.job(job_id)
