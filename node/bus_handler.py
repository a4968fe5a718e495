"""``radfed-node serve``: the site's NATS bus handler (the "bus agent" of older docs).

Connects out to NATS with the site's credentials, listens on ``radfed.site.<name>.request``, and for
each request: checks the coordinator's signature, runs it through the node's own execution path
(``node.execute.run_request``: policy, compilation, SQL, disclosure control, audit) in a worker
thread, and answers with a response signed by the site's Ed25519 key.  It also publishes a signed
heartbeat (site, version, uptime, and what its policy allows: node/plan.py) every few seconds so the
coordinator knows who is online.  A dry run (the spec under ``plan``) is answered by node/plan.py.

Handlers, not flags: :class:`Agent` takes the ``execute`` callable, so the same transport carries
whatever the node's execution layer answers.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable

import click

from cdm import __version__
from cdm.errors import reply_of
from cdm.records import SiteRequest, ValidationError, problems
from cdm.wire import (
    OFFLINE_STREAM,
    Signer,
    EnvelopeError,
    heartbeat_subject,
    make_response,
    open_envelope,
    request_subject,
    response_subject,
    site_inbox,
    verify,
)
from node.bus_connection import BusSettings, bus_settings, connect
from node.config import NodeConfig

Execute = Callable[[dict], dict]


def default_executor(engine, config: NodeConfig) -> Execute:
    """The node's execution layer, bound to its CDM; a clear error response when it is not installed."""
    try:
        from node.execute import run_request
    except ImportError as exc:  # the query layer is a separate module of the node
        reason = str(exc)

        def unavailable(request: dict) -> dict:
            return make_response(request, config.site_name, "error", "INTERNAL",
                                 f"query execution is not available on this node ({reason})")

        return unavailable
    from node.plan import plan_request

    def execute(request: dict) -> dict:  # a dry run carries its spec under "plan" (node/plan.py)
        if "plan" in request:
            return plan_request(engine, config, request)
        return run_request(engine, config, request, locked=True)  # over the bus, rounds are locked

    return execute


def log(site: str, message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] radfed-node {site}: {message}", err=True)


class Agent:
    """One site's connection to the bus."""

    def __init__(self, settings: BusSettings, execute: Execute, quiet: bool = False,
                 describe: Callable[[], dict] | None = None, gate: Callable[[dict], dict | None] | None = None):
        self.settings = settings
        self.site = settings.site
        self.execute = execute
        # freshness of verified requests: target site, expiry, nonce (node/disclosure/requests.py)
        self.gate = gate
        self.describe = describe  # what the heartbeat says about the site's policy (node/plan.py)
        self.signer = Signer(settings.site, settings.signer_key())
        self.coordinator_key = settings.coordinator_public_key()
        self.quiet = quiet
        self.started = time.time()
        self.answered = 0
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._stop = asyncio.Event()
        self.nc = None
        self.last_error: str | None = None

    def _log(self, message: str) -> None:
        if not self.quiet:
            log(self.site, message)

    async def _on_error(self, exc) -> None:
        if "authorization violation" in str(exc).lower() or self.nc is not None:
            self.last_error = str(exc)
        if self.nc is not None:  # while connecting, the final error is reported once instead
            self._log(f"bus error: {exc}")

    # ------------------------------------------------------------------ requests

    def _request_from(self, data: bytes) -> tuple[dict | None, dict | None]:
        """(request, None) when acceptable, else (None, error response)."""
        try:
            if self.coordinator_key is not None:
                request = verify(data, "coordinator", self.coordinator_key)
            else:
                request, _, _ = open_envelope(data)
        except EnvelopeError as exc:
            stub = {}
            try:
                stub, _, _ = open_envelope(data)
            except EnvelopeError:
                pass
            return None, make_response(stub if isinstance(stub, dict) else {}, self.site, *reply_of(exc))
        try:  # the shape every request has (cdm.records); the signed record itself is what runs
            SiteRequest.model_validate(request)
        except ValidationError as exc:
            return None, make_response(request, self.site, "error", "BAD_SPEC",
                                       f"request is malformed: {problems(exc)}"[:2000])
        return request, None

    async def handle(self, msg) -> None:
        """A live request: answer on its reply subject."""
        async with self._slots:
            started = time.perf_counter()
            response = await self._answer(msg.data)
            if msg.reply:
                await self.nc.publish(msg.reply, self.signer.seal(response))
            self.answered += 1
            code = f" {response.get('code')}" if response.get("code") else ""
            self._log(f"request {str(response.get('request_id'))[:8]}: {response.get('status')}{code}"
                      f" in {1000 * (time.perf_counter() - started):.1f} ms")

    # ------------------------------------------------------------------ durable queue (JetStream)

    async def _answer(self, data: bytes) -> dict:
        """The signed-to-be response for request bytes (shared by live and queued delivery)."""
        request, refusal = self._request_from(data)
        if refusal is not None:
            self._log(f"rejected a request: {refusal['message']}")
            return refusal
        if self.gate is not None:
            refusal = await asyncio.to_thread(self.gate, request)
            if refusal is not None:
                self._log(f"refused request {str(request['request_id'])[:8]}: {refusal['message']}")
                return {**refusal, "request_id": request["request_id"], "site": self.site}
        try:
            response = await asyncio.to_thread(self.execute, request)
        except Exception as exc:  # noqa: BLE001 - the executor's own failure; cdm.errors.reply_of says what to answer
            self._log(f"request {request['request_id']} failed: {type(exc).__name__}: {exc}")
            response = make_response(request, self.site, *reply_of(exc))
        return {**response, "request_id": request["request_id"], "site": self.site}

    async def _pull_queued(self) -> None:
        """Answer requests the coordinator queued while this site was offline (its own queue only)."""
        from nats.errors import TimeoutError as NatsTimeout

        try:
            sub = await self.nc.jetstream().pull_subscribe_bind(
                durable=self.site, stream=OFFLINE_STREAM, inbox_prefix=(site_inbox(self.site) + ".").encode())
        except Exception as exc:
            self._log(f"no durable queue: {exc}")
            return
        while not self._stop.is_set():
            try:
                messages = await sub.fetch(8, timeout=max(self.settings.heartbeat_seconds, 1.0))
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except Exception as exc:  # the consumer does not exist yet: nothing was ever queued for us
                await asyncio.sleep(self.settings.heartbeat_seconds)
                continue
            for msg in messages:
                async with self._slots:
                    response = await self._answer(msg.data)
                    await self.nc.publish(response_subject(self.site), self.signer.seal(response))
                    await msg.ack()
                    self.answered += 1
                    self._log(f"answered queued request {str(response.get('request_id'))[:8]}: {response.get('status')}")

    # ------------------------------------------------------------------ heartbeats

    async def heartbeat_once(self) -> None:
        beat = {"site": self.site, "version": __version__, "time": time.time(),
                "uptime": round(time.time() - self.started, 1), "answered": self.answered,
                "interval": self.settings.heartbeat_seconds}
        if self.describe is not None:
            beat.update(self.describe())
        await self.nc.publish(heartbeat_subject(self.site), self.signer.seal(beat))

    async def _heartbeats(self) -> None:
        while not self._stop.is_set():
            try:
                await self.heartbeat_once()
            except Exception as exc:  # disconnected: nats-py buffers or raises; keep beating
                self._log(f"heartbeat not sent: {exc}")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.heartbeat_seconds)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        s = self.settings
        connecting = asyncio.ensure_future(
            connect(s.url, s.user, s.password, f"radfed-node {self.site}", s.tls_ca, self._on_error,
                    inbox_prefix=site_inbox(self.site) if s.durable else None))
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # stopped before the bus accepted us
            connecting.cancel()
            return
        stopping.cancel()
        self.nc = connecting.result()
        subject = request_subject(self.site)
        tasks: set[asyncio.Task] = set()

        async def on_request(msg) -> None:  # one task per request: a slow query never blocks the next
            task = asyncio.ensure_future(self.handle(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await self.nc.subscribe(subject, cb=on_request)
        await self.nc.flush()
        self._log(f"connected to {s.url} as {s.user}; answering {subject}")
        beats = asyncio.ensure_future(self._heartbeats())
        queued = asyncio.ensure_future(self._pull_queued()) if s.durable else None
        await self._stop.wait()
        beats.cancel()
        if queued is not None:
            queued.cancel()
        try:
            await self.nc.drain()
        except Exception:
            pass
        self._log(f"stopped after answering {self.answered} request(s)")

    def stop(self) -> None:
        self._stop.set()


async def _serve(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


@click.command("serve")
@click.option("--quiet", is_flag=True, help="Do not log each request.")
@click.option("--flower", is_flag=True, help="Also start and supervise this site's Flower SuperNode ([learning] in node.toml).")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=None,
              help="The SuperNode's local runtime API port (default: [learning] runtime_port, else 9094).")
@click.pass_context
def serve_command(ctx: click.Context, quiet: bool, flower: bool = False, flower_port: int | None = None) -> None:
    """Answer federated queries: connect out to the coordinator's NATS bus with this site's credentials."""
    from cdm.db import open_engine, require_cdm

    config: NodeConfig = ctx.find_root().obj
    settings = bus_settings(config)
    engine = open_engine(config.database_url)
    require_cdm(engine)
    from node.plan import site_description

    from node.disclosure.requests import gate_for_config
    from node.secure import describe as secure_description

    agent = Agent(settings, default_executor(engine, config), quiet=quiet,
                  describe=lambda: {**site_description(engine, config), **secure_description(config)},
                  gate=gate_for_config(config))
    supernode = None
    if flower:  # issue 9: federated training (node/learn/supernode.py); the ClientApp reads this node.toml
        from node.learn.supernode import start_supernode

        supernode = start_supernode(config, flower_port, log=lambda m: log(config.site_name, m))
    try:
        asyncio.run(_serve(agent))
    except Exception as exc:  # connection refused, authorization violation, TLS failure
        from nats.errors import NoServersError

        if agent.last_error and "authorization violation" in agent.last_error.lower():
            reason = "the bus refused these credentials (Authorization Violation): check [bus] user and password"
        elif isinstance(exc, NoServersError):
            reason = "no NATS server reachable"
        else:
            reason = str(exc) or type(exc).__name__
        click.echo(f"error: cannot serve on the bus at {settings.url} as {settings.user}: {reason}", err=True)
        sys.exit(2)
    finally:
        if supernode is not None:
            supernode.stop()
