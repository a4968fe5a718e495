"""Submitting a job over the HTTP API, for every route that does (``POST /v1/jobs``,
``POST /v1/atlas/jobs``): the submission audited either way, an optional wait, and the job's answer
(200 when it finished, 202 while it runs)."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from cdm.errors import http_status_of
from cdm.messages import FINISHED
from coordinator.service import SubmitError


async def submit_job(coordinator, visible_job, who: dict, spec: dict, what: str | None, *, sites=None,
                     quorum=None, timeout=None, hold_offline=None, wait: float = 0.0) -> JSONResponse:
    """Submit ``spec`` for ``who``; ``what`` names it in the coordinator's audit (the analysis type)."""
    try:
        job_id = coordinator.submit(who["name"], spec, sites, quorum, timeout, hold_offline)
    except SubmitError as exc:
        coordinator.store.audit(who["name"], "job.submit", "refused", None, str(exc))
        raise HTTPException(http_status_of(exc), str(exc)) from None
    coordinator.store.audit(who["name"], "job.submit", "ok", job_id, what)
    await coordinator.wait(job_id, wait)
    job = visible_job(job_id, who)
    return JSONResponse(job, status_code=200 if job["status"] in FINISHED else 202)
