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
from pydantic import BaseModel, Field

from cdm.atlas.refusals import Untranslatable
from cdm.atlas.translate import atlas_spec
from coordinator.api_jobs import submit_job


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


def _translated(store, body: AtlasRequest, who: dict) -> dict:
    """The spec of an exactly translated definition; else the refusal audited and 400 with every
    problem (nothing is sent to any site)."""
    out = _translate(body)
    if not out["translated"]:
        store.audit(who["name"], "job.submit", "refused", None, "ATLAS definition not translated")
        raise HTTPException(400, {"message": "the ATLAS definition is not translated exactly; nothing was sent",
                                  "problems": out["problems"]})
    return out["spec"]


def router(coordinator, access, visible_job) -> APIRouter:
    api = APIRouter(prefix="/v1/atlas", dependencies=[Depends(access.caller)])  # every route needs a caller

    @api.post("/translate")
    async def translate(body: AtlasRequest):
        return _translate(body)

    @api.post("/jobs")
    async def submit(body: AtlasRequest, who: dict = Depends(access.caller)):
        spec = _translated(coordinator.store, body, who)
        return await submit_job(coordinator, visible_job, who, spec, "atlas " + spec["analysis"]["type"],
                                sites=body.sites, quorum=body.quorum, timeout=body.timeout, wait=body.wait)

    return api
