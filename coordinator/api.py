"""The coordinator's HTTP API (FastAPI), and the web console on the same app.

Every route but ``/v1/health`` needs ``Authorization: Bearer <token>`` (from ``radfed coordinator
add-researcher``) or a console session (:mod:`coordinator.access`).  Roles: ``researcher`` submits
jobs and reads its own; ``admin`` also reads every job and operates the coordinator.  Errors are JSON
``{"detail": "..."}`` with a clear message.  Spec validation and dry runs: :mod:`coordinator.api_specs`;
result tables and downloads: :mod:`coordinator.api_results`; operator actions:
:mod:`coordinator.api_operator`; the console's pages: :mod:`coordinator.console`.

    GET  /v1/health                 liveness (no token)
    GET  /v1/whoami
    GET  /v1/sites                  enrolled sites: online, version, last seen
    POST /v1/jobs                   {"spec": {...}, "sites"?: [...], "quorum"?: n, "timeout"?: s,
                                     "hold_offline"?: s (wait for offline sites to return), "wait"?: s}
    GET  /v1/jobs                   the caller's jobs (admin: ?all=true for everyone's)
    GET  /v1/jobs/{id}?wait=s       a job with its pooled and per-site results
    GET  /v1/researchers            (admin)
"""

from __future__ import annotations

import datetime as dt
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cdm import __version__
from cdm.errors import RadfedError, http_status_of
from coordinator.access import Access
from coordinator.api_jobs import submit_job
from coordinator.service import Coordinator


class JobRequest(BaseModel):
    spec: dict
    sites: list[str] | None = None
    quorum: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0, le=3600)
    hold_offline: float | None = Field(default=None, ge=0, le=7 * 86400)
    wait: float = Field(default=0.0, ge=0, le=600)


def _jsonable(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def create_app(coordinator: Coordinator, manage_lifecycle: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        if manage_lifecycle:
            await coordinator.start()
        yield
        if manage_lifecycle:
            await coordinator.stop()

    app = FastAPI(title="radfed coordinator", version=__version__, lifespan=lifespan)
    store = coordinator.store
    access = Access(store)
    caller, admin = access.caller, access.admin

    def visible_job(job_id: str, who: dict) -> dict:
        job = store.job(job_id)
        if job is None or (who["role"] != "admin" and job["researcher"] != who["name"]):
            raise HTTPException(404, f"no job {job_id}")
        return _jsonable(job)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc):  # never a traceback to a client
        return JSONResponse({"detail": f"coordinator error: {type(exc).__name__}"}, status_code=500)

    @app.exception_handler(RadfedError)
    async def expected(_request, exc):  # the status declared with the error (cdm/errors.py)
        status = http_status_of(exc)
        detail = str(exc) if status < 500 else f"coordinator error: {type(exc).__name__}"
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/v1/health")
    async def health():
        return {"status": "ok", "version": __version__,
                "bus": bool(coordinator.nc is not None and coordinator.nc.is_connected)}

    @app.get("/v1/whoami")
    async def whoami(who: dict = Depends(caller)):
        return {"name": who["name"], "role": who["role"]}

    @app.get("/v1/sites")
    async def sites(_who: dict = Depends(caller)):
        return {"sites": coordinator.sites_view()}

    @app.post("/v1/jobs")
    async def submit(body: JobRequest, who: dict = Depends(caller)):
        return await submit_job(coordinator, visible_job, who, body.spec, (body.spec.get("analysis") or {}).get("type"),
                                sites=body.sites, quorum=body.quorum, timeout=body.timeout,
                                hold_offline=body.hold_offline, wait=body.wait)

    @app.get("/v1/jobs")
    async def list_jobs(all: bool = False, limit: int = 50, who: dict = Depends(caller)):
        if all and who["role"] != "admin":
            raise HTTPException(403, "listing everyone's jobs needs the 'admin' role")
        return {"jobs": _jsonable(store.jobs(None if all else who["name"], max(1, min(limit, 500))))}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, wait: float = 0.0, who: dict = Depends(caller)):
        visible_job(job_id, who)
        await coordinator.wait(job_id, min(max(wait, 0.0), 600.0))
        return visible_job(job_id, who)

    @app.get("/v1/researchers")
    async def list_researchers(_who: dict = Depends(admin)):
        return {"researchers": _jsonable(store.researchers())}

    from coordinator import api_atlas, api_operator, api_results, api_specs, console

    for module in (api_specs, api_results, api_operator, api_atlas, console):
        app.include_router(module.router(coordinator, access, visible_job))
    return app
