"""The coordinator's job store on SQLite and PostgreSQL: everything a restart must not lose."""

from __future__ import annotations

import pytest

from coordinator.store import Store, StoreError, token_hash


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield Store(tmp_path / "coordinator.sqlite")
        return
    url = request.getfixturevalue("pg_server_url")
    s = Store(url)
    yield s
    from coordinator.store import metadata

    metadata.drop_all(s.engine)
    s.engine.dispose()


def test_sites_researchers_and_jobs_round_trip(store):
    store.add_site("site-a", "cHVibGlj", "$2b$10$hash")
    with pytest.raises(StoreError, match="already enrolled"):
        store.add_site("site-a", "x", "y")
    store.record_heartbeat("site-a", {"site": "site-a", "version": "0.1.0", "time": 1700000000.5})
    assert store.site("site-a")["last_seen"] == 1700000000.5 and store.public_keys() == {"site-a": "cHVibGlj"}

    token = store.add_researcher("alice", "researcher")
    assert store.researcher_for_token(token)["name"] == "alice"
    assert store.researcher_for_token(token + "x") is None
    assert token not in str(store.researchers()) and len(token_hash(token)) == 64
    with pytest.raises(StoreError, match="role"):
        store.add_researcher("bob", "superuser")

    spec = {"cohort": {}, "analysis": {"type": "count"}}
    job_id = store.create_job("alice", spec, "abc", ["site-a"], 1, 5.0)
    assert store.unfinished_jobs() == [job_id]
    store.start_job(job_id, {"site-a": "req-1"})
    store.record_site(job_id, "site-a", "ok", None, "", {"n": 12}, 3.5)
    store.finish_job(job_id, "done", "all 1 sites answered", {"type": "count"}, {"spec_hash": "abc"})
    job = store.job(job_id)
    assert job["status"] == "done" and job["spec"] == spec and job["per_site"][0]["result"] == {"n": 12}
    assert store.unfinished_jobs() == [] and [j["job_id"] for j in store.jobs("alice")] == [job_id]
    assert store.jobs("mallory") == []
