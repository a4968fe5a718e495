"""A job's results as tables, downloads and figures (the same numbers as the CLI's).

    GET /v1/jobs/{id}/tables        {"tables": [...], "sites": {...}} (coordinator.results)
    GET /v1/jobs/{id}/result.csv    the CSV ``radfed result --csv`` writes
    GET /v1/jobs/{id}/result.json   the job as ``radfed result --json`` prints it
    GET /v1/jobs/{id}/plot.png      the PNG ``radfed result --plots`` writes (404 if the result has none)
    GET /v1/jobs/{id}/figure        the interactive figure (Plotly JSON) the console draws
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from coordinator.results import job_csv, result_tables, sites_table


def _attachment(job: dict, suffix: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="radfed-{job["job_id"][:8]}.{suffix}"'}


_PYPLOT = threading.Lock()  # pyplot keeps global state: one figure at a time across worker threads


def png(job: dict) -> bytes | None:
    """The job's plot as PNG bytes (coordinator/plots.py, matplotlib), or None."""
    from coordinator.plots import plot_job

    if not job.get("pooled"):
        return None
    kind = job["pooled"].get("type", "result")
    with _PYPLOT, tempfile.TemporaryDirectory(prefix="radfed-plot-") as tmp:
        path = plot_job(job, f"{kind} {job['job_id'][:8]}", Path(tmp) / "plot.png")
        return path.read_bytes() if path is not None else None


async def _drawn(draw, job: dict, what: str) -> bytes:
    """``draw(job)`` off the event loop (matplotlib, plotly take a while); 404 when the result has no
    such ``what``."""
    data = await asyncio.to_thread(draw, job)
    if data is None:
        raise HTTPException(404, f"this result has no {what}")
    return data


def router(coordinator, access, visible_job) -> APIRouter:
    api = APIRouter(prefix="/v1/jobs/{job_id}")

    @api.get("/tables")
    async def tables(job_id: str, who: dict = Depends(access.caller)):
        job = visible_job(job_id, who)
        return {"tables": [t.as_dict() for t in result_tables(job)], "sites": sites_table(job).as_dict()}

    @api.get("/result.csv")
    async def result_csv(job_id: str, who: dict = Depends(access.caller)):
        job = visible_job(job_id, who)
        return Response(job_csv(job), media_type="text/csv; charset=utf-8", headers=_attachment(job, "csv"))

    @api.get("/result.json")
    async def result_json(job_id: str, who: dict = Depends(access.caller)):
        job = visible_job(job_id, who)
        return Response(json.dumps(job, indent=2, default=str), media_type="application/json",
                        headers=_attachment(job, "json"))

    @api.get("/plot.png")
    async def plot_png(job_id: str, who: dict = Depends(access.caller)):
        job = visible_job(job_id, who)
        return Response(await _drawn(png, job, "plot"), media_type="image/png", headers=_attachment(job, "png"))

    @api.get("/figure")
    async def figure(job_id: str, who: dict = Depends(access.caller)):
        from coordinator.console.figures import figure_for

        return Response(await _drawn(figure_for, visible_job(job_id, who), "figure"), media_type="application/json")

    return api
