"""ATLAS cohort definitions over the HTTP API (the same translation as ``radfed query run --atlas``).

    POST /v1/atlas/translate   {"definition": {...Circe JSON...}, "analysis"?, "variables"?}: always
                               200: {"translated": true, "spec": ...} or {"translated": false,
                               "problems": [{"path": "$.…", "reason": "…"}]}
    POST /v1/atlas/jobs        the same body plus sites / quorum / timeout / wait: translated, then
                               submitted as a job like POST /v1/jobs; 400 with every problem (and
                               nothing sent to any site) when the definition is not translated exactly
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cdm.atlas.refusals import Untranslatable
from cdm.atlas.translate import atlas_spec
from cdm.errors import http_status_of
from coordinator.service import SubmitError


class AtlasRequest(BaseModel):
    definition: dict
    name: str = ""
    analysis: dict | None = None
    variables: dict | None = None
    sites: list[str] | None = None
    quorum: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0, le=3600)
    wait: float = Field(default=0.0, ge=0, le=600)


def _translate(body: AtlasRequest) -> dict:
    try:
        return {"translated": True, "spec": atlas_spec(body.definition, body.analysis, body.variables, body.name)}
    except Untranslatable as exc:
        return {"translated": False, "problems": [{"path": p, "reason": r} for p, r in exc.problems]}


def router(coordinator, access, visible_job) -> APIRouter:
    api = APIRouter(prefix="/v1/atlas")

    @api.post("/translate")
    async def translate(body: AtlasRequest, _who: dict = Depends(access.caller)):
        return _translate(body)

    @api.post("/jobs")
    async def submit(body: AtlasRequest, who: dict = Depends(access.caller)):
        out = _translate(body)
        if not out["translated"]:
            coordinator.store.audit(who["name"], "job.submit", "refused", None, "ATLAS definition not translated")
            raise HTTPException(400, {"message": "the ATLAS definition is not translated exactly; nothing was sent",
                                      "problems": out["problems"]})
        try:
            job_id = coordinator.submit(who["name"], out["spec"], body.sites, body.quorum, body.timeout, None)
        except SubmitError as exc:
            coordinator.store.audit(who["name"], "job.submit", "refused", None, str(exc))
            raise HTTPException(http_status_of(exc), str(exc)) from None
        coordinator.store.audit(who["name"], "job.submit", "ok", job_id, "atlas " + out["spec"]["analysis"]["type"])
        await coordinator.wait(job_id, body.wait)
        job = visible_job(job_id, who)
        return JSONResponse(job, status_code=200 if job["status"] in ("done", "partial", "failed") else 202)

    return api
