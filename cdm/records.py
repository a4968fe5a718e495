"""The records that cross a boundary, typed once: the request a coordinator signs for one site, the
reply a site signs back, and a job as the coordinator's store keeps it.

They are pydantic models used where a record enters a process: the node checks a verified request
(node/bus_handler.py), the coordinator a verified reply (:func:`cdm.wire.check_response`), the store
a job it loads (coordinator/store.py).  They check; they never rewrite: validation is strict (no
coercion: ``"3"`` is not a number, ``1`` is not a name), and what is signed, hashed, run and written to
the audit log is still the record's own canonical JSON (:func:`cdm.wire.canonical`), so signatures and
audit entries are byte for byte what they were.  The words inside (statuses, refusal codes) are the
enums of :mod:`cdm.messages`.

Extra fields are allowed on the wire records: a round adds its own (``secure``, ``lock``, ``grid``:
docs/analysis-rounds.md), a reply its ``warnings`` and ``privacy``; the fields named here are the ones
every record has.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cdm.messages import JobStatus, RefusalCode, ReplyStatus, SiteStatus

__all__ = ["SiteRequest", "SiteResponse", "JobSite", "JobRecord", "ValidationError", "problems"]

# a word read from JSON or a database is a plain string: the enum takes it by value (an unknown one fails)
_Reply = Annotated[ReplyStatus, Field(strict=False)]
_Code = Annotated[RefusalCode, Field(strict=False)]
_Job = Annotated[JobStatus, Field(strict=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class SiteRequest(_Wire):
    """What a coordinator asks one site (:func:`cdm.wire.make_request`).  ``spec`` for a request to
    run, ``plan`` for a dry run (node/plan.py): exactly one of the two.  The freshness fields are
    checked for their meaning by :func:`cdm.wire.check_fresh` (a missing one is STALE, not malformed)."""

    request_id: str
    job_id: str | None = None
    requester: str | None = Field(None, description="the researcher the coordinator asks for")
    site: str | None = Field(None, description="the one site this request is for (else MISDIRECTED)")
    issued_at: Any = Field(None, description="epoch seconds; with expires_at, the request's validity")
    expires_at: Any = None
    nonce: Any = Field(None, description="random hex, never accepted twice by a site (else REPLAYED)")
    spec: dict | None = None
    plan: dict | None = None

    @model_validator(mode="after")
    def _one_spec(self) -> "SiteRequest":
        if (self.spec is None) == (self.plan is None):
            raise ValueError("a request carries exactly one spec object: under 'spec', or under 'plan' for a dry run")
        return self


class SiteResponse(_Wire):
    """What a site answers (:func:`cdm.wire.make_response`, node/execute.py): ``result`` only when
    ``status`` is ok; ``code`` says why nothing was released otherwise."""

    request_id: str | None
    site: str
    status: _Reply
    code: _Code | None = None
    message: str = ""
    result: dict | None = None


class _Stored(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class JobSite(_Stored):
    """One site's part of a job: pending (or waiting for an offline site) until it answered or gave up."""

    job_id: str
    site: str
    request_id: str
    status: Annotated[SiteStatus, Field(strict=False)]
    code: str | None = None  # RefusalCode of the reply; kept as stored, codes of older nodes included
    message: str | None = None
    result: Any = None
    elapsed_ms: float | None = None
    received_at: dt.datetime | None = None


class JobRecord(_Stored):
    """A job as the store keeps it (coordinator/store.py ``coord_job`` and its ``coord_job_site`` rows)."""

    job_id: str
    researcher: str
    spec: dict
    spec_hash: str
    status: _Job
    sites: list[str]
    quorum: int
    timeout: float
    hold_offline: float
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    message: str | None = None
    pooled: Any = None
    provenance: dict | None = None
    per_site: list[JobSite] = []


def problems(exc: ValidationError) -> str:
    """A validation error in one line: ``field: reason; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())
