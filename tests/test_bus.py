"""The bus itself: signed records, and per-site NATS credentials enforced by a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError

from cdm import wire
from coordinator.home import CoordinatorHome
from coordinator.natsconf import COORDINATOR_USER
from coordinator.natsproc import NatsServer, free_coordinator_ports

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------- records and signatures


def test_signed_response_verifies_and_any_change_breaks_it():
    key = wire.generate_key()
    signer = wire.Signer("site-a", key)
    request = wire.make_request({"analysis": {"type": "count"}}, "alice")
    response = wire.make_response(request, "site-a", "ok", result={"n": 42})
    data = signer.seal(response)
    assert wire.verify(data, "site-a", wire.public_key_text(key)) == response

    tampered = data.replace(b'"n":42', b'"n":43')
    assert tampered != data
    with pytest.raises(wire.WireError, match="bad signature"):
        wire.verify(tampered, "site-a", wire.public_key_text(key))
    with pytest.raises(wire.WireError, match="signed by 'site-a', expected 'site-b'"):
        wire.verify(data, "site-b", wire.public_key_text(key))
    other = wire.generate_key()
    with pytest.raises(wire.WireError, match="bad signature"):
        wire.verify(data, "site-a", wire.public_key_text(other))
    with pytest.raises(wire.WireError):
        wire.verify(b"not json", "site-a", wire.public_key_text(key))


def test_canonical_json_is_order_independent_and_response_must_answer_its_request():
    assert wire.canonical({"b": 1, "a": [1.5, None]}) == wire.canonical({"a": [1.5, None], "b": 1}) == b'{"a":[1.5,null],"b":1}'
    request = wire.make_request({"analysis": {"type": "count"}}, "alice")
    response = wire.make_response(request, "site-a", "ok", result={"n": 1})
    wire.check_response(response, request["request_id"], "site-a")
    with pytest.raises(wire.WireError, match="answers request"):
        wire.check_response(response, "another-request", "site-a")
    with pytest.raises(wire.WireError, match="claims site"):
        wire.check_response(response, request["request_id"], "site-b")


def test_site_names_must_be_subject_tokens(tmp_path):
    home = CoordinatorHome(tmp_path / "coord").init(**free_coordinator_ports())
    for bad in ("a.b", "site>", "*", "", "x y"):
        with pytest.raises(ValueError):
            home.enroll_site(bad, tmp_path / "bundles")
    bundle = home.enroll_site("site-a", tmp_path / "bundles")
    assert (bundle.folder / "site.key").stat().st_mode & 0o077 == 0
    assert (bundle.folder / "bus.password").stat().st_mode & 0o077 == 0
    # the coordinator keeps the public key and a bcrypt hash, never the password
    stored = home.store.site("site-a")
    password = (bundle.folder / "bus.password").read_text().strip()
    assert stored["nats_password_hash"].startswith("$2") and password not in home.nats_conf_path.read_text()


# ---------------------------------------------------------------------------- credentials on a real server


@pytest.fixture
def bus(tmp_path):
    home = CoordinatorHome(tmp_path / "coord").init(**free_coordinator_ports())
    bundles = {s: home.enroll_site(s, tmp_path / "bundles") for s in ("site-a", "site-b")}
    server = NatsServer(home.nats_conf_path, "127.0.0.1", home.settings["nats_port"], tmp_path / "nats.log").start()
    yield home, bundles, server
    server.stop()


def password(bundle) -> str:
    return (bundle.folder / "bus.password").read_text().strip()


def test_wrong_password_cannot_connect_and_the_node_says_so(bus):
    home, bundles, _server = bus
    toml = bundles["site-a"].node_toml
    (toml.parent / "bus.password").write_text("not-the-password\n")
    db = toml.parent / "cdm.sqlite"
    subprocess.run([str(BIN / "radfed-node"), "--db", str(db), "init"], check=True, capture_output=True)
    run = subprocess.run([str(BIN / "radfed-node"), "--config", str(toml), "--db", str(db), "serve"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Authorization Violation" in run.stderr and "Traceback" not in run.stderr


def test_a_site_cannot_read_another_sites_requests_or_replies(bus):
    home, bundles, _server = bus
    url = home.nats_url

    async def scenario():
        errors: list[str] = []

        async def on_error(exc):
            errors.append(str(exc))

        coordinator = await nats.connect(url, user=COORDINATOR_USER, password=home.nats_password)
        spy = await nats.connect(url, user="site-a", password=password(bundles["site-a"]), error_cb=on_error,
                                 max_reconnect_attempts=0)
        victim = await nats.connect(url, user="site-b", password=password(bundles["site-b"]))
        stolen: list[bytes] = []

        async def steal(msg):
            stolen.append(msg.data)

        # site-a tries to read site-b's requests, the replies to the coordinator, and everything
        await spy.subscribe(wire.request_subject("site-b"), cb=steal)
        await spy.subscribe("_INBOX.>", cb=steal)
        await spy.subscribe(">", cb=steal)
        await spy.flush()

        async def answer(msg):
            await msg.respond(b"secret answer from site-b")

        await victim.subscribe(wire.request_subject("site-b"), cb=answer)
        await victim.flush()
        reply = await coordinator.request(wire.request_subject("site-b"), b"secret question", timeout=5)
        assert reply.data == b"secret answer from site-b"   # the legitimate path works

        # site-a cannot publish as site-b (heartbeat) nor send requests to site-b
        beats: list[bytes] = []

        async def beat(msg):
            beats.append(msg.data)

        await coordinator.subscribe(wire.heartbeat_subject("*"), cb=beat)
        await coordinator.flush()
        await spy.publish(wire.heartbeat_subject("site-b"), b"forged heartbeat")
        await spy.publish(wire.request_subject("site-b"), b"forged request")
        await spy.publish(wire.heartbeat_subject("site-a"), b"own heartbeat")
        await spy.flush()
        # NATS keeps one publisher's order to a subscriber: once the own heartbeat (published last) is
        # here, a forged one that got through would be here too.  Wait for it instead of a fixed 0.5 s
        # (on a busy CI machine delivery once took longer and the test read an empty list).
        for _ in range(200):
            if beats:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

        for nc in (coordinator, spy, victim):
            await nc.close()
        return stolen, beats, errors

    stolen, beats, errors = asyncio.run(scenario())
    assert stolen == []
    assert beats == [b"own heartbeat"]
    assert any("permissions violation" in e.lower() and "radfed.site.site-b.request" in e for e in errors), errors
    assert any("permissions violation" in e.lower() and "_inbox.>" in e.lower() for e in errors), errors
    assert any("publish" in e and "radfed.site.site-b.heartbeat" in e for e in errors), errors


def test_no_subscriber_means_offline_at_once(bus):
    home, _bundles, _server = bus

    async def scenario():
        nc = await nats.connect(home.nats_url, user=COORDINATOR_USER, password=home.nats_password)
        try:
            await nc.request(wire.request_subject("site-a"), b"x", timeout=5)
        except NoRespondersError:
            return True
        finally:
            await nc.close()
        return False

    assert asyncio.run(scenario())


def test_tls_bus_with_the_bundles_ca(tmp_path):
    from coordinator.tlsinit import make_tls
    from node.bus_connection import connect, tls_context

    home = CoordinatorHome(tmp_path / "coord").init(**free_coordinator_ports())
    make_tls(home.path / "tls", ["127.0.0.1", "localhost"])
    bundle = home.enroll_site("site-a", tmp_path / "bundles")
    assert home.nats_url.startswith("tls://") and 'tls_ca = "ca.pem"' in bundle.node_toml.read_text()
    assert "tls {" in home.nats_conf_path.read_text()
    plain_url = home.nats_url.replace("tls://", "nats://")

    async def scenario():
        nc = await connect(home.nats_url, "site-a", password(bundle), "test", bundle.folder / "ca.pem", reconnect=False)
        ok = nc.is_connected and nc._client_id is not None
        await nc.close()
        try:  # a client that does not trust the coordinator's CA is refused
            bad = await nats.connect(home.nats_url, user="site-a", password=password(bundle),
                                     tls=tls_context(None) or __import__("ssl").create_default_context(),
                                     max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=3)
            await bad.close()
            untrusted = True
        except Exception:
            untrusted = False
        return ok, untrusted

    with NatsServer(home.nats_conf_path, "127.0.0.1", home.settings["nats_port"], tmp_path / "nats.log"):
        ok, untrusted_accepted = asyncio.run(scenario())
    assert ok and not untrusted_accepted and plain_url != home.nats_url


def test_a_site_cannot_pull_another_sites_durable_queue(tmp_path):
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    home = CoordinatorHome(tmp_path / "coord").init(**free_coordinator_ports(), jetstream=True)
    bundles = {s: home.enroll_site(s, tmp_path / "bundles") for s in ("site-a", "site-b")}

    async def scenario():
        errors: list[str] = []

        async def on_error(exc):
            errors.append(str(exc))

        coordinator = await nats.connect(home.nats_url, user=COORDINATOR_USER, password=home.nats_password)
        js = coordinator.jetstream()
        await js.add_stream(StreamConfig(name=wire.OFFLINE_STREAM, subjects=[f"{wire.OFFLINE_PREFIX}.*"],
                                         retention=RetentionPolicy.WORK_QUEUE))
        for site in bundles:
            await js.add_consumer(wire.OFFLINE_STREAM, ConsumerConfig(
                durable_name=site, filter_subject=wire.offline_subject(site), ack_policy=AckPolicy.EXPLICIT))
        await js.publish(wire.offline_subject("site-b"), b"queued for site-b")
        spy = await nats.connect(home.nats_url, user="site-a", password=password(bundles["site-a"]),
                                 inbox_prefix=wire.site_inbox("site-a"), error_cb=on_error, max_reconnect_attempts=0)
        stolen = []
        for target in ("site-b", "site-a"):
            sub = await spy.jetstream().pull_subscribe_bind(durable=target, stream=wire.OFFLINE_STREAM,
                                                            inbox_prefix=(wire.site_inbox("site-a") + ".").encode())
            try:
                stolen += [m.data for m in await sub.fetch(1, timeout=1)]
            except Exception:
                pass
        owner = await nats.connect(home.nats_url, user="site-b", password=password(bundles["site-b"]),
                                   inbox_prefix=wire.site_inbox("site-b"))
        sub = await owner.jetstream().pull_subscribe_bind(durable="site-b", stream=wire.OFFLINE_STREAM,
                                                          inbox_prefix=(wire.site_inbox("site-b") + ".").encode())
        mine = [m.data for m in await sub.fetch(1, timeout=5)]
        for nc in (coordinator, spy, owner):
            await nc.close()
        return stolen, mine, errors

    with NatsServer(home.nats_conf_path, "127.0.0.1", home.settings["nats_port"], tmp_path / "nats.log"):
        stolen, mine, errors = asyncio.run(scenario())
    assert stolen == [] and mine == [b"queued for site-b"]
    assert any("permissions violation" in e.lower() and "radfed_offline.site-b" in e.lower() for e in errors), errors
