"""Attack family 9 (issue 16): captured request bytes replayed at the same site, at another site, or
late.  Real nats-server, two real site agents with their enrolled keys and state databases; the
attacker is someone who captured the coordinator's signed bytes.  Asserted: the copy never reaches
the node's execution (so no result, no budget or rate-limit charge to the researcher), the refusal is
audited, and the legitimate request ran exactly once."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from cdm import wire
from coordinator.home import CoordinatorHome
from coordinator.natsconf import COORDINATOR_USER
from coordinator.natsproc import NatsServer, free_coordinator_ports
from node.bus_handler import Agent
from node.audit import AuditLog
from node.bus_connection import bus_settings
from node.config import load_config
from node.disclosure.requests import RequestGate, gate_for_config
from node.state import state_engine


@pytest.fixture
def federation(tmp_path):
    home = CoordinatorHome(tmp_path / "coord").init(**free_coordinator_ports())
    bundles = {s: home.enroll_site(s, tmp_path / "bundles") for s in ("site-a", "site-b")}
    server = NatsServer(home.nats_conf_path, "127.0.0.1", home.settings["nats_port"], tmp_path / "nats.log").start()
    yield home, bundles
    server.stop()


def test_replayed_misdirected_and_stale_requests_never_run(federation):
    home, bundles = federation
    configs = {s: load_config(b.node_toml) for s, b in bundles.items()}
    ran: dict[str, list[str]] = {s: [] for s in configs}

    def executor(site):
        def execute(request):
            ran[site].append(request["nonce"])
            return wire.make_response(request, site, "ok", result={"n": 42})
        return execute

    agents = {s: Agent(bus_settings(c), executor(s), quiet=True, gate=gate_for_config(c)) for s, c in configs.items()}
    signer = home.signer

    async def scenario():
        tasks = [asyncio.ensure_future(a.run()) for a in agents.values()]
        nc = await nats.connect(home.nats_url, user=COORDINATOR_USER, password=home.nats_password)
        await asyncio.sleep(1.0)  # agents subscribe

        async def ask(site, data):
            msg = await nc.request(wire.request_subject(site), data, timeout=10)
            return wire.verify(msg.data, site, wire.public_key_text(
                wire.load_private_key(bundles[site].folder / "site.key")))

        spec = {"cohort": {}, "analysis": {"type": "count"}}
        captured = signer.seal(wire.make_request(spec, "alice", site="site-a"))
        first = await ask("site-a", captured)
        replay = await ask("site-a", captured)                       # same bytes, same site
        elsewhere = await ask("site-b", captured)                    # same bytes, another site
        old = signer.seal(wire.make_request(spec, "alice", site="site-a", now=time.time() - 3600, ttl=60))
        stale = await ask("site-a", old)
        early = await ask("site-a", signer.seal(wire.make_request(spec, "alice", site="site-a",
                                                                    now=time.time() + 3600)))
        forever = await ask("site-a", signer.seal(wire.make_request(spec, "alice", site="site-a")
                                                  | {"expires_at": time.time() + 10 * 365 * 86400}))
        unnamed = {k: v for k, v in wire.make_request(spec, "alice").items() if k != "nonce"}
        no_nonce = await ask("site-a", signer.seal(unnamed | {"site": "site-a"}))
        await nc.close()
        for a in agents.values():
            a.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        return first, replay, elsewhere, stale, early, forever, no_nonce

    first, replay, elsewhere, stale, early, forever, no_nonce = asyncio.run(scenario())
    assert first["status"] == "ok" and first["result"] == {"n": 42}
    assert (replay["status"], replay["code"], replay["result"]) == ("refused", "REPLAYED", None)
    assert (elsewhere["status"], elsewhere["code"], elsewhere["result"]) == ("refused", "MISDIRECTED", None)
    assert (stale["code"], early["code"], forever["code"], no_nonce["code"]) == ("STALE",) * 4
    # the protected thing: the captured request ran once in all, at the site it named
    assert len(ran["site-a"]) == 1 and ran["site-b"] == []
    audited = [e["code"] for e in AuditLog.for_config(configs["site-a"]).entries()]
    assert audited.count("REPLAYED") == 1 and audited.count("STALE") == 4
    assert [e["code"] for e in AuditLog.for_config(configs["site-b"]).entries()] == ["MISDIRECTED"]


def test_nonce_store_is_atomic_and_bounded_by_expiry(tmp_path):
    engine = state_engine(type("C", (), {"section": lambda self, name: {}, "data_dir": tmp_path})())
    gate = RequestGate("site-a", engine)
    now = time.time()
    request = wire.make_request({}, "alice", site="site-a", now=now, ttl=60)
    assert gate(request, now=now) is None
    assert gate(request, now=now + 30)["code"] == "REPLAYED"
    assert gate(request, now=now + 60 + wire.CLOCK_SKEW_SECONDS + 1)["code"] == "STALE"  # expired: refused before the store
    # a nonce is needed only while its request could be accepted: expired ones are removed
    for i in range(200):
        gate(wire.make_request({}, "alice", site="site-a", now=now + 3 * 3600 + i, ttl=60), now=now + 3 * 3600 + i)
    with engine.connect() as conn:
        from sqlalchemy import func, select

        from node.state import request_nonces
        oldest = conn.execute(select(func.min(request_nonces.c.expires_at))).scalar_one()
    assert oldest > now + 60
