"""Fan-out over the bus: send one signed request per site, gather the signed replies.

Each site's reply is verified against the public key enrolled for that site and must answer the very
request id it was sent; anything else counts as ``bad_signature`` and its content is discarded.  A
site with no subscriber answers ``offline`` at once (NATS "no responders"); one that does not answer
in time is ``timeout``.  Either way the round still completes with the sites that did answer.

:meth:`Federation.asker` gives the ``ask(analysis) -> list[dict]`` callable that the coordinator's
multi-round algorithms (``coordinator.stats``) use: the same cohort, a new analysis each round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from cdm.errors import RadfedError
from cdm.messages import RefusalCode, ReplyStatus, SiteStatus
from cdm.wire import CLOCK_SKEW_SECONDS, Signer, WireError, check_response, make_request, request_subject, verify

ANSWERED = tuple(ReplyStatus)


@dataclass
class SiteReply:
    site: str
    request_id: str
    status: str          # ok | refused | error | timeout | offline | bad_signature
    code: str | None = None
    message: str = ""
    result: dict | None = None
    elapsed_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class QuorumError(RadfedError, RuntimeError):
    """Fewer sites answered a round than the quorum requires."""

    def __init__(self, message: str, replies: list[SiteReply]):
        super().__init__(message)
        self.replies = replies


def describe_missing(replies: list[SiteReply]) -> str:
    missing = [r for r in replies if r.status != "ok"]
    return ", ".join(f"{r.site} ({r.status}{': ' + r.code if r.code else ''})" for r in missing)


class Federation:
    """Requests to sites over an open NATS connection ``nc``.

    ``public_keys`` is a callable giving the enrolled key of each site (read from the store each round,
    so an enrollment or revocation takes effect without a restart).
    """

    def __init__(self, nc, signer: Signer, public_keys: Callable[[], dict[str, str]]):
        self.nc = nc
        self.signer = signer
        self.public_keys = public_keys

    async def ask_site(self, site: str, request: dict, key: str | None, timeout: float) -> SiteReply:
        rid = request["request_id"]
        started = time.perf_counter()

        def reply(status, code=None, message="", result=None) -> SiteReply:
            return SiteReply(site, rid, status, code, message, result, round(1000 * (time.perf_counter() - started), 2))

        if key is None:
            return reply(SiteStatus.OFFLINE, RefusalCode.NOT_ENROLLED, f"site {site!r} is not enrolled at this coordinator")
        try:
            msg = await self.nc.request(request_subject(site), self.signer.seal(request), timeout=timeout)
        except NoRespondersError:
            return reply(SiteStatus.OFFLINE, None, "no node agent is connected for this site")
        except (NatsTimeout, asyncio.TimeoutError):
            return reply(SiteStatus.TIMEOUT, None, f"no answer within {timeout:g} s")
        try:
            response = verify(msg.data, site, key)
            check_response(response, rid, site)
        except WireError as exc:
            return reply(SiteStatus.BAD_SIGNATURE, RefusalCode.BAD_SIGNATURE, f"reply rejected: {exc}")
        message, warnings = str(response.get("message") or ""), response.get("warnings")
        if isinstance(warnings, list) and warnings:  # e.g. UNKNOWN_CODE: kept with the site's message
            message = f"{message}; warnings: {'; '.join(str(w) for w in warnings[:20])}".lstrip("; ")
        return reply(response["status"], response.get("code"), message, response.get("result"))

    async def round(self, sites: list[str], spec: dict, requester: str, job_id: str, timeout: float,
                    on_reply: Callable[[SiteReply], Awaitable[None] | None] | None = None,
                    request_ids: dict[str, str] | None = None, extra: dict | None = None) -> list[SiteReply]:
        """One request per site in parallel; ``on_reply`` is called as each one settles.  ``extra``:
        request fields besides the spec (``secure``, ``lock``, ``grid``: coordinator/secure.py)."""
        keys = self.public_keys()

        async def one(site: str) -> SiteReply:
            request = {**make_request(spec, requester, job_id, (request_ids or {}).get(site), site=site,
                                      ttl=timeout + CLOCK_SKEW_SECONDS), **(extra or {})}
            result = await self.ask_site(site, request, keys.get(site), timeout)
            if on_reply is not None:
                maybe = on_reply(result)
                if asyncio.iscoroutine(maybe):
                    await maybe
            return result

        return list(await asyncio.gather(*(one(site) for site in sites)))

    def asker(self, loop: asyncio.AbstractEventLoop, sites: list[str], cohort_spec: dict, requester: str,
              job_id: str, timeout: float, quorum: int | None = None,
              on_reply: Callable[[int, str, SiteReply], None] | None = None, secure=None,
              attempt: int = 1) -> "Asker":
        return Asker(self, loop, sites, cohort_spec, requester, job_id, timeout, quorum, on_reply, secure, attempt)


class Asker:
    """``ask(analysis) -> list[dict]`` for synchronous multi-round algorithms running in a worker thread.

    Each call sends the job's spec with ``analysis`` replaced to every site and returns the results of
    the sites that answered ``ok`` (each with its ``"site"`` added under ``"_site"``).  When fewer than
    ``quorum`` sites answer, :class:`QuorumError` names the missing ones.  Every round is kept in
    :attr:`rounds` for the job's provenance; ``on_reply(round number, analysis type, reply)`` is called as
    each site answers each round (the job's live per-site progress).

    With ``secure`` (a :class:`coordinator.secure.Mode`) each round is a secure sum: every site must
    answer, and the call returns one pooled result (``"_site": "pooled"``), never a site's own;
    ``attempt`` numbers the re-runs after a site dropped (fresh seeds: coordinator/secure.py).
    """

    carries_extra = True

    def __init__(self, federation: Federation, loop, sites, spec, requester, job_id, timeout, quorum, on_reply=None,
                 secure=None, attempt: int = 1):
        self.secure, self.attempt = secure, attempt
        self.federation, self.loop = federation, loop
        self.on_reply = on_reply
        self.sites, self.spec, self.requester, self.job_id = list(sites), dict(spec), requester, job_id
        self.timeout = timeout
        self.quorum = len(self.sites) if quorum is None else quorum
        self.rounds: list[dict] = []
        #: each site's reply to the latest round it was asked, its time summed over all rounds
        self.last: dict[str, SiteReply] = {}

    def __call__(self, analysis: dict, extra: dict | None = None) -> list[dict]:
        if self.secure:  # a coordinator.secure.Mode: its round driver (coordinator/secure.py)
            return self.secure.round(self, analysis, extra or {})
        replies = self.send(analysis, extra or {})
        return self.answers(replies)

    def send(self, analysis: dict, extra: dict, mode: str = "plain") -> list[SiteReply]:
        """One round to every site; its replies (recorded for provenance and progress)."""
        spec = {**self.spec, "analysis": analysis}
        number, kind = len(self.rounds) + 1, str(analysis.get("type"))
        progress = None if self.on_reply is None else (lambda reply: self.on_reply(number, kind, reply))
        future = asyncio.run_coroutine_threadsafe(
            self.federation.round(self.sites, spec, self.requester, self.job_id, self.timeout, on_reply=progress,
                                  extra=extra),
            self.loop)
        replies = future.result()
        self.rounds.append({"analysis": analysis.get("type"), "mode": mode,
                            "sites": {r.site: r.status for r in replies}})
        for r in replies:
            before = self.last.get(r.site)
            total = (before.elapsed_ms or 0.0) + (r.elapsed_ms or 0.0) if before else r.elapsed_ms
            self.last[r.site] = SiteReply(r.site, r.request_id, r.status, r.code, r.message, None,
                                          None if total is None else round(total, 2))
        return replies

    def answers(self, replies: list[SiteReply]) -> list[dict]:
        ok = [r for r in replies if r.status == SiteStatus.OK]
        if len(ok) < max(self.quorum, 1):
            raise QuorumError(f"{len(ok)} of {len(replies)} sites answered (quorum {self.quorum}); "
                              f"missing: {describe_missing(replies)}", replies)
        return [{**(r.result or {}), "_site": r.site} for r in ok]
