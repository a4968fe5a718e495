"""The coordinator as a real process: token auth, forged replies, restarts that lose nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import pytest

from cdm import wire
from federation import Network

BIN = Path(sys.executable).parent
COUNT = {"cohort": {}, "analysis": {"type": "count"}}


@pytest.fixture
def network(tmp_path):
    net = Network(tmp_path, ["site-a", "site-b"])
    net.start_coordinator()
    yield net
    net.close()


def test_unauthenticated_and_wrong_role_clients_are_refused(network):
    assert network.call("GET", "/v1/health", token=None).status_code == 200
    for method, path in (("GET", "/v1/sites"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/whoami")):
        response = network.call(method, path, token=None, json={"spec": COUNT})
        assert response.status_code == 401, (path, response.text)
        assert "bearer token" in response.json()["detail"]
    forged = network.call("POST", "/v1/jobs", token="rf_" + "x" * 43, json={"spec": COUNT})
    assert forged.status_code == 401 and forged.json()["detail"] == "unknown or revoked token"
    # researchers see only their own jobs and cannot list everyone's
    assert network.call("GET", "/v1/jobs", params={"all": True}).status_code == 403
    assert network.call("GET", "/v1/researchers").status_code == 403
    assert network.call("GET", "/v1/researchers", token=network.admin_token).status_code == 200
    # nothing was submitted by any refused call
    assert network.home.store.jobs() == []
    # the CLI says the same in one line, no traceback
    run = subprocess.run([str(BIN / "radfed"), "sites"], capture_output=True, text=True,
                         env=network.env(RADFED_TOKEN=""), timeout=60)
    assert run.returncode == 2 and "401" in run.stderr and "Traceback" not in run.stderr


def test_bad_specs_and_unknown_sites_are_refused_clearly(network):
    bad = network.call("POST", "/v1/jobs", json={"spec": {"cohort": {}}})
    assert bad.status_code == 400 and "analysis" in bad.json()["detail"]
    wrong = network.call("POST", "/v1/jobs", json={"spec": {"cohort": {"age": {"min": "old"}},
                                                            "analysis": {"type": "count"}}})
    assert wrong.status_code == 400 and "cohort.age" in wrong.json()["detail"]   # cdm.spec names the field
    unknown = network.call("POST", "/v1/jobs", json={"spec": COUNT, "sites": ["site-z"]})
    assert unknown.status_code == 400 and "site-z" in unknown.json()["detail"]
    quorum = network.call("POST", "/v1/jobs", json={"spec": COUNT, "quorum": 3})
    assert quorum.status_code == 400 and "quorum" in quorum.json()["detail"]


class Impostor:
    """A process holding site-b's real bus credentials but not its signing key: answers every request."""

    def __init__(self, network: Network, site: str, result: dict):
        self.url = network.home.nats_url
        self.site = site
        self.password = (network.bundles[site].folder / "bus.password").read_text().strip()
        self.signer = wire.Signer(site, wire.generate_key())   # not the enrolled key
        self.result = result
        self.ready = threading.Event()
        self.stop = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        nc = await nats.connect(self.url, user=self.site, password=self.password)
        self.stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()

        async def answer(msg):
            request, _, _ = wire.open_envelope(msg.data)
            await msg.respond(self.signer.seal(wire.make_response(request, self.site, "ok", result=self.result)))

        await nc.subscribe(wire.request_subject(self.site), cb=answer)
        await nc.flush()
        self.ready.set()
        await self.stop.wait()
        await nc.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def test_forged_result_is_rejected_and_not_pooled(network):
    network.start_node("site-a")
    with Impostor(network, "site-b", {"n": 1_000_000}):
        job = network.run(COUNT, timeout=10)
    per_site = {s["site"]: s for s in job["per_site"]}
    assert per_site["site-b"]["status"] == "bad_signature"
    assert "does not verify against the key enrolled for 'site-b'" in per_site["site-b"]["message"]
    assert per_site["site-b"]["result"] is None
    assert per_site["site-a"]["status"] in ("ok", "refused", "error")  # the real node answered, signed
    assert "site-b (bad_signature" in job["message"]
    if job["pooled"]:
        assert "site-b" not in job["pooled"]["sites"]
        assert all(row["pooled"]["n"] != 1_000_000 for row in job["pooled"]["rows"])


def test_restart_loses_no_submitted_job(network):
    network.start_node("site-a")
    network.nodes["site-a"].send_signal(signal.SIGSTOP)   # the site hangs: the job stays running
    try:
        job_id = network.submit(COUNT, sites=["site-a"], timeout=20)
        time.sleep(0.5)
        network.stop_coordinator(signal.SIGKILL)           # crash, no clean shutdown
    finally:
        network.nodes["site-a"].send_signal(signal.SIGCONT)
    assert network.home.store.job(job_id)["status"] in ("queued", "running")
    network.start_coordinator()
    job = network.call("GET", f"/v1/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] in ("done", "partial", "failed") and job["job_id"] == job_id
    assert job["per_site"][0]["status"] in ("ok", "refused", "error")   # answered after the restart
    assert "re-dispatching 1 unfinished job" in (network.root / "coordinator.log").read_text()


def test_offline_site_gets_its_request_when_it_returns(network):
    network.start_node("site-a")
    job_id = network.submit(COUNT, hold_offline=60, timeout=20, wait=2)  # site-b is offline: the job is held open
    assert network.per_site(job_id)[1]["site-b"]["status"] == "waiting"
    network.start_node("site-b", wait=False)                    # the site comes back
    job, per_site = network.per_site(job_id, wait=60)
    assert per_site["site-b"]["status"] in ("ok", "refused", "error"), job   # answered, signed, after its return
    assert "offline" not in job["message"]


def test_jetstream_queues_requests_for_an_offline_site(tmp_path):
    network = Network(tmp_path, ["site-a", "site-b"], jetstream=True)
    assert "durable = true" in network.bundles["site-b"].node_toml.read_text()
    conf = network.home.nats_conf_path.read_text()
    assert "jetstream" in conf and "$JS.API.CONSUMER.MSG.NEXT.RADFED_OFFLINE.site-b" in conf
    try:
        network.start_coordinator()
        network.start_node("site-a")
        job_id = network.submit(COUNT, hold_offline=60, timeout=20, wait=2)
        held = network.per_site(job_id)[1]
        assert held["site-b"]["status"] == "waiting" and "queued durably" in held["site-b"]["message"]
        network.start_node("site-b", wait=False)         # pulls its queue when it connects
        job, per_site = network.per_site(job_id, wait=60)
        assert per_site["site-b"]["status"] in ("ok", "refused", "error"), job
        assert "answered queued request" in (network.root / "site-b.log").read_text()
        assert "site-b answered its queued request" in (network.root / "coordinator.log").read_text()
    finally:
        network.close()
