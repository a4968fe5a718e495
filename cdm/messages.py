"""The words that travel between a site and the coordinator, declared once: the status of a site's
reply, the status of a job, and the stable codes of a refusal (docs/analysis-rounds.md, docs/node-policy.md).

Each is a :class:`enum.StrEnum`: a member *is* its string (``ReplyStatus.OK == "ok"``), so records stay
plain JSON, the store keeps the same text, and a typo in a new code fails where it is written
(``RefusalCode("MIN_CEL")`` raises) instead of reaching a researcher.
"""

from __future__ import annotations

from enum import StrEnum


class ReplyStatus(StrEnum):
    """What a site answered (the ``status`` of a response record)."""

    OK = "ok"              #: released: ``result`` holds the numbers
    REFUSED = "refused"    #: declined by the site's policy; ``code`` says why, nothing released
    ERROR = "error"        #: the site failed (``code`` INTERNAL); nothing released


class SiteStatus(StrEnum):
    """One site's part of a round, as the coordinator records it: not over yet, a reply, or no reply."""

    PENDING = "pending"              #: asked; no answer yet
    WAITING = "waiting"              #: offline; the request is held (or queued durably) for its return
    OK = "ok"
    REFUSED = "refused"
    ERROR = "error"
    OFFLINE = "offline"              #: no node agent connected (or not enrolled: code NOT_ENROLLED)
    TIMEOUT = "timeout"              #: no answer in time
    BAD_SIGNATURE = "bad_signature"  #: a reply that does not verify: discarded


#: the site statuses that are a signed answer of the site itself
ANSWERED = tuple(SiteStatus(s) for s in ReplyStatus)


class JobStatus(StrEnum):
    """A job at the coordinator."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"          #: every site asked contributed
    PARTIAL = "partial"    #: the quorum contributed, not every site
    FAILED = "failed"      #: below the quorum, or no exact answer


#: a job in one of these states is over
FINISHED = (JobStatus.DONE, JobStatus.PARTIAL, JobStatus.FAILED)


class RefusalCode(StrEnum):
    """The stable codes of a reply that released nothing (``code`` of a refused or failed reply)."""

    BAD_SPEC = "BAD_SPEC"                  #: the spec does not validate, or a data check of its analysis failed
    NOT_ALLOWED = "NOT_ALLOWED"            #: the site's allowlist or limits forbid it
    RATE_LIMIT = "RATE_LIMIT"              #: too many requests from this requester in the last hour
    PENDING_APPROVAL = "PENDING_APPROVAL"  #: waiting for the site administrator
    DENIED = "DENIED"                      #: the site administrator denied it
    BUDGET = "BUDGET"                      #: the requester's privacy budget is spent
    UNKNOWN_CODE = "UNKNOWN_CODE"          #: a code the spec needs is not in the site's vocabulary
    MIN_CELL = "MIN_CELL"                  #: a count below the site's minimum cell count
    MIN_ROWS = "MIN_ROWS"                  #: too few rows for a model's parameters
    DIFFERENCING = "DIFFERENCING"          #: with earlier releases it would disclose a small set of persons
    AUDIT_FULL = "AUDIT_FULL"              #: the site-wide release auditor's history is full (node/disclosure)
    MISDIRECTED = "MISDIRECTED"            #: a signed request for another site (node/disclosure/requests.py)
    STALE = "STALE"                        #: a request out of its validity, or without nonce or times
    REPLAYED = "REPLAYED"                  #: a request whose nonce this site has already seen
    INTERNAL = "INTERNAL"                  #: the site failed (status error)
    NOT_ENROLLED = "NOT_ENROLLED"          #: the coordinator does not know the site (status offline)
    BAD_SIGNATURE = "BAD_SIGNATURE"        #: the reply did not verify (status bad_signature)
    ROUND_LOCKED = "ROUND_LOCKED"          #: beta is not the algorithm's next step from the pooled fits (node/secure.py)
    SECURE_REQUIRED = "SECURE_REQUIRED"    #: the site answers this analysis only as a masked share of a sum
    SECURE_PEERS = "SECURE_PEERS"          #: a secure sum with < 3 sites, or naming another key for this site
    SECURE_REPLAY = "SECURE_REPLAY"        #: a second, different share under masks already used
