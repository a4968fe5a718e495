"""Request freshness: a signed request runs once, at the site it names, while it is valid.

The coordinator's Ed25519 signature covers the whole request record (cdm/wire.py), which names its
target ``site``, ``issued_at``, ``expires_at`` and a random ``nonce``.  Before anything is run this gate
refuses (and audits):

* ``MISDIRECTED`` -- bytes captured on the way to another site, replayed here;
* ``STALE`` -- no nonce or times, expired, issued in the future, or valid for longer than a site accepts;
* ``REPLAYED`` -- a nonce this site has already seen.

Nonces are kept in the node's state database until their request expires (and at most
``cdm.wire.MAX_REQUEST_LIFETIME_SECONDS``), so the store is bounded by the request rate times the
longest validity, and a replay is caught for as long as the bytes would otherwise be accepted.  The
check and the insertion are one statement (a primary-key conflict), so two copies arriving at once
cannot both run.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from cdm.errors import reply_of
from cdm.wire import CLOCK_SKEW_SECONDS, StaleRequest, check_fresh, make_response
from node import state

N = state.request_nonces


def remember_nonce(engine, request: dict, now: float | None = None) -> None:
    """Record ``request``'s nonce; :class:`StaleRequest` ``REPLAYED`` when it was seen before."""
    now = time.time() if now is None else now
    try:
        with engine.begin() as conn:
            # nonces of requests that check_fresh refuses anyway are no longer needed (an indexed delete)
            conn.execute(delete(N).where(N.c.expires_at < now - 2 * CLOCK_SKEW_SECONDS))
            conn.execute(insert(N).values(nonce=request["nonce"], request_id=str(request.get("request_id"))[:64],
                                          requester=str(request.get("requester"))[:255],
                                          expires_at=float(request["expires_at"])))
    except IntegrityError:
        raise StaleRequest("REPLAYED", "this request was already received by this site (same nonce): "
                                       "a replayed copy is not run again") from None


class RequestGate:
    """Callable for node/bus_handler.py: ``None`` when the verified ``request`` may run, else the refusal
    response (written to the site's audit log too)."""

    def __init__(self, site: str, engine, audit=None):
        self.site, self.engine, self.audit = site, engine, audit

    def __call__(self, request: dict, now: float | None = None) -> dict | None:
        try:
            check_fresh(request, self.site, now)
            remember_nonce(self.engine, request, now)
            return None
        except StaleRequest as exc:
            response = make_response(request, self.site, *reply_of(exc))
            if self.audit is not None:
                self.audit.append(request_id=response["request_id"], requester=str(request.get("requester")),
                                  spec_hash=None, decision="refused", code=exc.code, rows_touched=0,
                                  released=None, message=str(exc), claimed_site=request.get("site"),
                                  issued_at=request.get("issued_at"), expires_at=request.get("expires_at"))
            return response


def gate_for_config(config) -> RequestGate:
    from node.audit import AuditLog

    return RequestGate(config.site_name, state.state_engine(config), AuditLog.for_config(config))
