"""The coordinator service: the bus connection, heartbeats, and running jobs.

A job's life: the API stores it ``queued`` (so a restart cannot lose it), :meth:`Coordinator.run_job`
marks it ``running`` with one pending row per site, fans the spec out, records each site's verified
reply as it arrives, pools the results and finishes it ``done`` (every site answered), ``partial``
(the quorum answered; the missing sites are named) or ``failed`` (below quorum).  On start, every job
still ``queued`` or ``running`` is dispatched again.

Analyses pooled in one round live in :mod:`coordinator.aggregate`; multi-round algorithms (KM, Cox,
GLM, quantiles...) are :mod:`coordinator.stats`'s, driven through an ``ask`` callable.
"""

from __future__ import annotations

import asyncio
import time

from cdm import __version__, secagg
from cdm.errors import BadInput
from cdm.messages import JobStatus, RefusalCode, SiteStatus
from cdm.spec import SpecError, parse_spec
from cdm.wire import (
    OFFLINE_PREFIX,
    OFFLINE_STREAM,
    WireError,
    heartbeat_subject,
    offline_subject,
    response_subject,
    spec_hash,
    verify,
)
from coordinator import aggregate, stats
from coordinator.fanout import Federation, QuorumError, SiteReply, describe_missing
from coordinator.home import CoordinatorHome
from coordinator.secure import Mode, SecureModeError, SiteDropped, choose_mode, secure_table

ONLINE_AFTER_MISSED_BEATS = 3
DEFAULT_TIMEOUT = 30.0
REDISPATCH_GRACE = 15.0
FEDERATION_KEYS = ("sites", "quorum", "timeout", "hold_offline", "secure")


class SubmitError(BadInput, ValueError):
    """A job cannot be accepted as submitted (bad spec, unknown site, impossible quorum)."""


def split_spec(spec: dict) -> tuple[dict, dict]:
    """(spec for the nodes, federation options): a spec may carry ``federation: {sites, quorum, timeout}``."""
    spec = dict(spec)
    federation = spec.pop("federation", None) or {}
    if not isinstance(federation, dict):
        raise SubmitError("federation must be an object with sites, quorum and/or timeout")
    unknown = set(federation) - set(FEDERATION_KEYS)
    if unknown:
        raise SubmitError(f"federation: unknown option(s) {', '.join(sorted(unknown))}")
    if not isinstance(federation.get("secure", False), bool):
        raise SubmitError("federation.secure must be true or false (default: secure with 3 or more sites)")
    return spec, federation


def validate_spec(spec: dict) -> None:
    """Reject obviously malformed specs at submission; the nodes validate fully (cdm.spec)."""
    if not isinstance(spec, dict):
        raise SubmitError("spec must be an object")
    analysis = spec.get("analysis")
    if not isinstance(analysis, dict) or not isinstance(analysis.get("type"), str):
        raise SubmitError("spec.analysis.type is missing")
    try:
        parse_spec(spec)
    except SpecError as exc:  # names the field and why
        raise SubmitError(f"invalid spec: {exc}") from None


def with_code_systems(spec, network: dict | None):
    """``spec`` with the network's names for local code systems (coordinator.toml ``[code_systems]``)
    added to its own ``code_systems`` (a name the spec declares itself wins), so researchers write
    ``HOSPLAB:K-12`` and every node reads ``http://hospital.example/codes|K-12``."""
    if not network or not isinstance(spec, dict):
        return spec
    own = spec.get("code_systems") if isinstance(spec.get("code_systems"), dict) else {}
    return {**spec, "code_systems": {**network, **own}}


class Coordinator:
    def __init__(self, home: CoordinatorHome, nats_url: str | None = None, log=None):
        self.home = home
        self.store = home.store
        self.signer = home.signer
        self.nats_url = nats_url or home.nats_url
        self.log = log or (lambda message: None)
        self.nc = None
        self.federation: Federation | None = None
        self.tasks: dict[str, asyncio.Task] = {}
        self.heartbeat_seconds = 5.0
        self.online_events: dict[str, asyncio.Event] = {}
        self.durable_waits: dict[str, asyncio.Future] = {}
        self.js = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, redispatch: bool = True) -> None:
        import nats

        from coordinator.natsconf import COORDINATOR_USER

        tls = None
        files = self.home.tls_files()
        if files and files.get("ca"):
            import ssl

            tls = ssl.create_default_context(cafile=str(files["ca"]))

        async def on_error(exc):
            self.log(f"bus error: {exc}")

        self.nc = await nats.connect(servers=[self.nats_url], user=COORDINATOR_USER, password=self.home.nats_password,
                                     name="radfed coordinator", tls=tls, error_cb=on_error,
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5)
        self.federation = Federation(self.nc, self.signer, self.store.public_keys)
        await self.nc.subscribe(heartbeat_subject("*"), cb=self._on_heartbeat)
        if self.home.settings.get("jetstream"):
            await self._start_jetstream()
        await self.nc.flush()
        self.log(f"connected to the bus at {self.nats_url}")
        if redispatch:
            pending = self.store.unfinished_jobs()
            if pending:
                self.log(f"re-dispatching {len(pending)} unfinished job(s) from before the restart")
            for job_id in pending:  # sites reconnect after a bus restart: hold for them a little
                self.dispatch(job_id, grace=REDISPATCH_GRACE)

    async def stop(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.nc is not None:
            try:
                await self.nc.drain()
            except Exception:
                pass
            self.nc = None

    # ------------------------------------------------------------------ durable delivery (JetStream)

    async def _start_jetstream(self) -> None:
        from nats.js.api import RetentionPolicy, StreamConfig

        self.js = self.nc.jetstream()
        await self.js.add_stream(StreamConfig(name=OFFLINE_STREAM, subjects=[f"{OFFLINE_PREFIX}.*"],
                                              retention=RetentionPolicy.WORK_QUEUE, max_age=7 * 86400))
        # Whatever is still queued was queued by the coordinator that ran before this one: either for
        # a job that has finished since (its hold ran out) or for an unfinished job that start()
        # re-dispatches next, queueing it afresh.  Dropping it keeps a returning site from running a
        # request nobody waits for (work, and a release recorded against its differencing history).
        info = await self.js.stream_info(OFFLINE_STREAM)
        if info.state.messages:
            await self.js.purge_stream(OFFLINE_STREAM)
            self.log(f"JetStream: dropped {info.state.messages} request(s) queued before the restart "
                     "(unfinished jobs are queued again)")
        await self.nc.subscribe(response_subject("*"), cb=self._on_durable_response)
        self.log(f"JetStream: requests for offline sites are queued on {OFFLINE_PREFIX}.<site>")

    async def _queue_durably(self, site: str, request: dict) -> int:
        """Queue ``request`` for ``site``; its stream sequence number (to withdraw it)."""
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        try:
            await self.js.consumer_info(OFFLINE_STREAM, site)
        except NotFoundError:
            await self.js.add_consumer(OFFLINE_STREAM, ConsumerConfig(
                durable_name=site, filter_subject=offline_subject(site), ack_policy=AckPolicy.EXPLICIT,
                ack_wait=300, max_deliver=5))
        ack = await self.js.publish(offline_subject(site), self.signer.seal(request))
        return ack.seq

    async def _withdraw(self, site: str, seq: int | None) -> None:
        """Take a queued request out of the stream once nobody waits for its answer: the job is
        finished without this site, which must not run it when it returns (a site that has
        already fetched it answers into the void, harmlessly)."""
        if seq is None:
            return
        try:
            await self.js.delete_msg(OFFLINE_STREAM, seq)
            self.log(f"JetStream: withdrew the request queued for {site} (hold expired)")
        except Exception as exc:  # already delivered and acknowledged: nothing left to withdraw
            self.log(f"JetStream: queued request for {site} already taken ({type(exc).__name__})")

    def _verified(self, msg, what: str) -> tuple[str, dict] | None:
        """(site, record) for a message on ``radfed.site.<site>.*`` signed by that site's enrolled key."""
        site = msg.subject.split(".")[2]
        key = self.store.public_keys().get(site)
        if key is None:
            return None
        try:
            return site, verify(msg.data, site, key)
        except WireError as exc:
            self.log(f"ignored {what} for {site}: {exc}")
            return None

    async def _on_durable_response(self, msg) -> None:
        verified = self._verified(msg, "a queued reply")
        if verified is None:
            return
        _site, response = verified
        future = self.durable_waits.get(response.get("request_id"))
        if future is not None and not future.done():
            future.set_result((msg.data, response))

    async def _durable_reply(self, job: dict, site: str, request_id: str, hold: float) -> SiteReply:
        from cdm.wire import CLOCK_SKEW_SECONDS, check_response, make_request

        # valid while it may wait in the queue, and then be answered (the site refuses it after that)
        request = make_request(job["spec"], job["researcher"], job["job_id"], request_id, site=site,
                               ttl=hold + job["timeout"] + CLOCK_SKEW_SECONDS)
        future = asyncio.get_running_loop().create_future()
        self.durable_waits[request_id] = future
        seq = None
        try:
            seq = await self._queue_durably(site, request)
            self.store.record_site(job["job_id"], site, SiteStatus.WAITING, None,
                                   f"offline; request queued durably for up to {hold:g} s", None, None)
            _data, response = await asyncio.wait_for(future, hold)
        except asyncio.TimeoutError:
            await self._withdraw(site, seq)
            return SiteReply(site, request_id, SiteStatus.OFFLINE, None, f"offline; queued request not answered within {hold:g} s")
        finally:
            self.durable_waits.pop(request_id, None)
        try:
            check_response(response, request_id, site)
        except WireError as exc:
            return SiteReply(site, request_id, SiteStatus.BAD_SIGNATURE, RefusalCode.BAD_SIGNATURE, f"reply rejected: {exc}")
        self.log(f"job {job['job_id'][:8]}: {site} answered its queued request")
        return SiteReply(site, request_id, response["status"], response.get("code"),
                         str(response.get("message") or ""), response.get("result"))

    # ------------------------------------------------------------------ heartbeats and sites

    async def _on_heartbeat(self, msg) -> None:
        verified = self._verified(msg, "a heartbeat")
        if verified is None:
            return
        site, beat = verified
        if beat.get("site") == site:
            self.heartbeat_seconds = float(beat.get("interval", self.heartbeat_seconds))
            self.store.record_heartbeat(site, beat)
            self._online(site).set()

    def _online(self, site: str) -> asyncio.Event:
        return self.online_events.setdefault(site, asyncio.Event())

    def sites_view(self) -> list[dict]:
        now = time.time()
        out = []
        for site in self.store.sites():
            last = site.get("last_seen")
            beat = site.get("heartbeat") or {}
            window = ONLINE_AFTER_MISSED_BEATS * float(beat.get("interval", self.heartbeat_seconds))
            out.append({
                "site": site["name"], "state": site["state"],
                "online": bool(last and now - last <= window),
                "last_seen": last, "seconds_since_seen": round(now - last, 1) if last else None,
                "version": site.get("version"), "enrolled_at": site["enrolled_at"].isoformat(timespec="seconds"),
                "answered": beat.get("answered"),
                # what the site's policy allows, as its last heartbeat said (node/plan.py)
                "backend": beat.get("backend"), "policy": beat.get("policy"),
            })
        return out

    # ------------------------------------------------------------------ jobs

    def submit(self, researcher: str, spec: dict, sites: list[str] | None = None, quorum: int | None = None,
               timeout: float | None = None, hold_offline: float | None = None) -> str:
        node_spec, options = split_spec(spec)
        node_spec = with_code_systems(node_spec, self.home.settings.get("code_systems"))
        validate_spec(node_spec)
        chosen = self.chosen_sites(sites, options)
        quorum = int(quorum if quorum is not None else options.get("quorum", 1))
        if not 1 <= quorum <= len(chosen):
            raise SubmitError(f"quorum {quorum} is impossible with {len(chosen)} site(s)")
        timeout = float(timeout if timeout is not None else options.get("timeout", DEFAULT_TIMEOUT))
        if not 0 < timeout <= 3600:
            raise SubmitError("timeout must be between 0 and 3600 seconds")
        hold = float(hold_offline if hold_offline is not None else options.get("hold_offline", 0.0))
        if not 0 <= hold <= 7 * 86400:
            raise SubmitError("hold_offline must be between 0 and 604800 seconds")
        secure = {"secure": options["secure"]} if "secure" in options else {}
        job_id = self.store.create_job(researcher, node_spec, spec_hash(node_spec), chosen, quorum, timeout, hold, secure)
        self.dispatch(job_id)
        return job_id

    def chosen_sites(self, sites: list[str] | None, options: dict) -> list[str]:
        """The sites a job asks: those named (in the call, else the spec's ``federation``), else all enrolled."""
        enrolled = sorted(self.store.public_keys())
        chosen = list(sites or options.get("sites") or enrolled)
        unknown = sorted(set(chosen) - set(enrolled))
        if unknown:
            raise SubmitError(f"unknown site(s): {', '.join(unknown)} (enrolled: {', '.join(enrolled) or 'none'})")
        if not chosen:
            raise SubmitError("no sites are enrolled at this coordinator")
        return chosen

    def dispatch(self, job_id: str, grace: float = 0.0) -> asyncio.Task:
        task = asyncio.ensure_future(self.run_job(job_id, grace))
        self.tasks[job_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(job_id, None))
        return task

    async def wait(self, job_id: str, seconds: float) -> None:
        task = self.tasks.get(job_id)
        if task is not None and seconds > 0:
            await asyncio.wait({task}, timeout=seconds)

    async def run_job(self, job_id: str, grace: float = 0.0) -> None:
        job = self.store.job(job_id)
        if job is None:
            return
        job["hold_offline"] = max(float(job.get("hold_offline") or 0.0), grace)
        spec, sites, researcher = job["spec"], job["sites"], job["researcher"]
        analysis = spec.get("analysis", {})
        started = time.perf_counter()
        mode = None
        try:
            mode = self._mode(job)
            if analysis.get("type") in stats.ANALYSES or mode.secure:
                pooled, replies, rounds = await self._run_stats(job, mode)
            else:
                replies = await self._run_one_round(job)
                rounds = [{"analysis": analysis.get("type"), "sites": {r.site: r.status for r in replies}}]
                ok = {r.site: r.result or {} for r in replies if r.status == SiteStatus.OK}
                pooled = aggregate.pool(analysis, ok) if len(ok) >= job["quorum"] else None
            ok_sites = [r.site for r in replies if r.status == SiteStatus.OK]
            if len(ok_sites) < job["quorum"]:
                status = JobStatus.FAILED
                message = (f"{len(ok_sites)} of {len(sites)} sites answered, quorum is {job['quorum']}; "
                           f"missing: {describe_missing(replies)}")
            elif len(ok_sites) < len(sites):
                status = JobStatus.PARTIAL
                message = f"partial: {len(ok_sites)} of {len(sites)} sites answered; missing: {describe_missing(replies)}"
            else:
                status, message = JobStatus.DONE, f"all {len(sites)} sites answered"
            if status != JobStatus.FAILED and pooled is None and analysis.get("type") not in aggregate.POOLED_TYPES:
                message += f"; no coordinator-side pooling for {analysis.get('type')!r}: per-site results only"
        except (QuorumError, stats.StatsError, SecureModeError) as exc:  # too few sites, no exact answer
            pooled, rounds, status, message = None, [], JobStatus.FAILED, str(exc)
        except asyncio.CancelledError:
            raise  # shutting down: the job stays running and is re-dispatched on the next start
        except Exception as exc:  # a pooling bug must not leave the job hanging
            pooled, rounds, status, message = None, [], JobStatus.FAILED, f"coordinator error: {type(exc).__name__}: {exc}"
        provenance = {
            "coordinator_version": __version__, "spec_hash": job["spec_hash"], "requester": researcher,
            "sites_asked": sites, "quorum": job["quorum"], "timeout": job["timeout"], "rounds": rounds,
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 2),
            "verified_with": {s: k[:12] for s, k in self.store.public_keys().items() if s in sites},
            "options": (job.get("provenance") or {}).get("options", {}),
            "mode": (mode.as_dict() if not (isinstance(pooled, dict) and pooled.get("fallback"))
                     else {"mode": "plain", "reason": pooled["fallback"], "chosen_first": mode.as_dict()})
            if mode is not None else None,
        }
        if isinstance(pooled, dict) and mode is not None and "aggregation" not in pooled:  # which mode was used
            pooled = {**pooled, "aggregation": "secure" if mode.secure else "plain"}
        self.store.finish_job(job_id, status, message, pooled, provenance)
        self.log(f"job {job_id[:8]} by {researcher}: {message}")

    async def _plain_round(self, job: dict, sites: list[str]) -> tuple[dict | None, list[SiteReply]]:
        """A one-round analysis over ``sites`` in plain mode (after a secure attempt lost sites)."""
        def record(reply: SiteReply) -> None:
            self.store.record_site(job["job_id"], reply.site, reply.status, reply.code, reply.message,
                                   reply.result, reply.elapsed_ms)

        replies = await self.federation.round(sites, job["spec"], job["researcher"], job["job_id"], job["timeout"],
                                              on_reply=record)
        ok = {r.site: r.result or {} for r in replies if r.status == "ok"}
        analysis = job["spec"].get("analysis", {})
        return (aggregate.pool(analysis, ok) if len(ok) >= job["quorum"] else None), replies

    async def _run_one_round(self, job: dict) -> list[SiteReply]:
        import uuid

        request_ids = {site: str(uuid.uuid4()) for site in job["sites"]}
        self.store.start_job(job["job_id"], request_ids)

        def record(reply: SiteReply) -> None:
            self.store.record_site(job["job_id"], reply.site, reply.status, reply.code, reply.message,
                                   reply.result, reply.elapsed_ms)

        replies = await self.federation.round(job["sites"], job["spec"], job["researcher"], job["job_id"],
                                              job["timeout"], on_reply=record, request_ids=request_ids)
        hold = float(job.get("hold_offline") or 0.0)
        offline = [r for r in replies if r.status == SiteStatus.OFFLINE and r.code != RefusalCode.NOT_ENROLLED]
        if hold > 0 and offline:
            # durable delivery: the job stays running (and survives a restart) until each offline
            # site's next verified heartbeat, then that site gets the same request again
            waited = await asyncio.gather(*(self._when_back(job, r, request_ids[r.site], hold) for r in offline))
            again = {r.site: r for r in waited}
            replies = [again.get(r.site, r) for r in replies]
            for r in again.values():
                record(r)
        return replies

    async def _when_back(self, job: dict, reply: SiteReply, request_id: str, hold: float) -> SiteReply:
        from cdm.wire import CLOCK_SKEW_SECONDS, make_request

        if self.js is not None:
            return await self._durable_reply(job, reply.site, request_id, hold)

        self.store.record_site(job["job_id"], reply.site, SiteStatus.WAITING, None,
                               f"offline; held up to {hold:g} s for its return", None, None)
        event = self._online(reply.site)
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), hold)
        except asyncio.TimeoutError:
            return SiteReply(reply.site, request_id, SiteStatus.OFFLINE, None, f"offline, and did not return within {hold:g} s")
        self.log(f"job {job['job_id'][:8]}: {reply.site} is back, delivering its request")
        request = make_request(job["spec"], job["researcher"], job["job_id"], request_id, site=reply.site,
                               ttl=job["timeout"] + CLOCK_SKEW_SECONDS)
        return await self.federation.ask_site(reply.site, request, self.store.public_keys().get(reply.site),
                                              job["timeout"])

    def _mode(self, job: dict) -> Mode:
        """Secure or plain for this job (coordinator/secure.py), from the spec, the sites' heartbeats
        and how many sites take part."""
        beats = {s["name"]: s.get("heartbeat") or {} for s in self.store.sites()}
        requested = ((job.get("provenance") or {}).get("options") or {}).get("secure")
        return choose_mode(job["spec"], requested, job["sites"], beats)

    async def _run_stats(self, job: dict, mode: Mode | None = None):
        """Multi-round algorithm in a worker thread, asking the sites through the bus.

        Each site's last reply (its refusal code, say) is recorded however the algorithm ends.  In
        secure mode a site that drops out makes the analysis start again without it (fresh masks),
        as long as enough sites remain (coordinator/secure.py)."""
        import uuid

        self.store.start_job(job["job_id"], {site: str(uuid.uuid4()) for site in job["sites"]})
        secure = mode if mode is not None and mode.secure else None
        current = {"label": "secure" if secure else "plain"}

        def progress(number: int, kind: str, reply: SiteReply) -> None:  # live: each site, each round
            note = reply.message or reply.status
            if current["label"] == "secure" and reply.status == "ok":
                note = "masked share"  # never a site's own value, not even in the job's progress
            self.store.record_site(job["job_id"], reply.site, reply.status, reply.code,
                                   f"round {number} ({kind}, {current['label']}): {note}", None, reply.elapsed_ms)

        sites, attempt, history, dropped, fallback = list(job["sites"]), 1, [], [], None
        analysis = job["spec"]["analysis"]
        while True:
            ask = self.federation.asker(asyncio.get_running_loop(), sites, job["spec"], job["researcher"],
                                        job["job_id"], job["timeout"], job["quorum"], progress, secure, attempt)
            try:
                if analysis.get("type") in stats.ANALYSES:
                    pooled = await asyncio.to_thread(stats.run_analysis, analysis, ask)
                elif secure:  # a one-round table in secure mode (coordinator/secure.py)
                    pooled = await asyncio.to_thread(secure_table, ask, analysis)
                else:  # a one-round analysis gone plain: each remaining site's own answer, as _run_one_round
                    pooled, plain = await self._plain_round(job, sites)
                    ask.last.update({r.site: r for r in plain})
                    ask.rounds.append({"analysis": analysis.get("type"), "mode": "plain",
                                       "sites": {r.site: r.status for r in plain}})
                break
            except SiteDropped as exc:
                history += ask.rounds
                for reply in exc.replies:
                    why = f"{reply.code}: {reply.message}" if reply.code else reply.message or reply.status
                    reply = SiteReply(reply.site, reply.request_id, reply.status, reply.code,
                                      f"no share for secure round {len(ask.rounds)} ({why}); the analysis was re-run "
                                      "without this site, with fresh masks", None, reply.elapsed_ms)
                    dropped.append(reply)
                    self.store.record_site(job["job_id"], reply.site, reply.status, reply.code, reply.message,
                                           None, reply.elapsed_ms)
                sites = [s for s in sites if s not in exc.sites]
                if len(sites) < max(job["quorum"], 1) or (secure.required and len(sites) < secagg.MIN_SITES):
                    raise stats.StatsError(f"{exc}; {len(sites)} of {len(job['sites'])} sites remain, quorum is "
                                           f"{job['quorum']}" + (f", and secure mode ({secure.reason}) needs "
                                                                 f"{secagg.MIN_SITES}" if secure.required else "")) from None
                if len(sites) < secagg.MIN_SITES:  # secure only by default: two sites go on as a plain job would
                    fallback = (f"plain: only {len(sites)} site(s) remained after {', '.join(exc.sites)} gave no "
                                "share, and a sum cannot hide one of two sites from the other")
                    secure, current["label"] = None, "plain"
                else:
                    secure = Mode(True, secure.reason, {s: k for s, k in secure.keys.items() if s in sites})
                self.log(f"job {job['job_id'][:8]}: {exc}; re-running without {', '.join(exc.sites)}")
                attempt += 1
            finally:
                for site in sites if analysis.get("type") in stats.ANALYSES or secure else []:
                    reply = ask.last.get(site) or SiteReply(site, "", "error", None, "never asked")
                    self.store.record_site(job["job_id"], site, reply.status, reply.code,
                                           (f"{current['label']}: {len(ask.rounds)} round(s)" if reply.status == "ok"
                                            else reply.message or reply.status), None, reply.elapsed_ms)
        replies = [ask.last.get(site) or SiteReply(site, "", "error", None, "never asked") for site in sites]
        replies += dropped
        if isinstance(pooled, dict):
            pooled = {**pooled, "aggregation": current["label"]}
        if secure and isinstance(pooled, dict):
            pooled = {**pooled, "sites": sites,
                      "secure": {"protocol": secagg.PROTOCOL, "sites": sites, "attempts": attempt,
                                 "dropped": [r.site for r in dropped], "reason": secure.reason}}
        elif fallback and isinstance(pooled, dict):
            pooled["fallback"] = fallback
        return pooled, replies, history + ask.rounds
