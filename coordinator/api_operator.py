"""Operating the coordinator over HTTP (role ``admin``): what ``radfed coordinator ...`` does on the host.

    POST   /v1/researchers          {"name", "role"?, "expires_in_days"?}: the new token, shown once
    DELETE /v1/researchers/{name}   revoke the researcher's token (and its console sessions)
    POST   /v1/sites                {"name"}: enrol a site; the answer is its credentials bundle (zip)
    DELETE /v1/sites/{name}         revoke a site: its bus credentials stop working
    GET    /v1/audit                the coordinator's audit trail (?limit, ?action, ?actor) and whether
                                    its hash chain is intact

Every call is written to the audit trail, refused ones too.  The enrolment bundle holds the site's
private key and bus password: it is built in a private temporary folder, sent once, and not kept.
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
import zipfile
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from cdm.errors import http_status_of
from coordinator.home import HomeError
from coordinator.store import StoreError, utcnow


class NewResearcher(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    role: str = "researcher"
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class NewSite(BaseModel):
    name: str = Field(min_length=1, max_length=64)


def _iso(value):
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else value


def bundle_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()


def router(coordinator, access, visible_job) -> APIRouter:
    api = APIRouter(prefix="/v1")
    store = coordinator.store

    @api.post("/researchers")
    async def add_researcher(body: NewResearcher, who: dict = Depends(access.admin)):
        expires = utcnow() + dt.timedelta(days=body.expires_in_days) if body.expires_in_days else None
        try:
            token = store.add_researcher(body.name, body.role, expires)
        except StoreError as exc:
            store.audit(who["name"], "researcher.add", "refused", body.name, str(exc))
            raise HTTPException(http_status_of(exc), str(exc)) from None
        store.audit(who["name"], "researcher.add", "ok", body.name.strip(),
                    f"role {body.role}, expires {_iso(expires) or 'never'}")
        return {"name": body.name.strip(), "role": body.role, "expires_at": _iso(expires), "token": token}

    @api.delete("/researchers/{name}")
    async def revoke_researcher(name: str, who: dict = Depends(access.admin)):
        try:
            store.revoke_researcher(name)
        except StoreError as exc:
            store.audit(who["name"], "researcher.revoke", "refused", name, str(exc))
            raise HTTPException(http_status_of(exc), str(exc)) from None
        store.audit(who["name"], "researcher.revoke", "ok", name)
        return {"name": name, "state": "revoked"}

    @api.post("/sites")
    async def enrol_site(body: NewSite, who: dict = Depends(access.admin)):
        with tempfile.TemporaryDirectory(prefix="radfed-bundle-") as tmp:
            try:
                bundle = coordinator.home.enroll_site(body.name, tmp)
            except HomeError as exc:
                store.audit(who["name"], "site.enrol", "refused", body.name, str(exc))
                raise HTTPException(http_status_of(exc), str(exc)) from None
            data = bundle_zip(bundle.folder)
        store.audit(who["name"], "site.enrol", "ok", body.name, "bundle sent to the operator's browser")
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="radfed-site-{body.name}.zip"', "Cache-Control": "no-store"})

    @api.delete("/sites/{name}")
    async def revoke_site(name: str, who: dict = Depends(access.admin)):
        try:
            coordinator.home.revoke_site(name)
        except (HomeError, StoreError) as exc:
            store.audit(who["name"], "site.revoke", "refused", name, str(exc))
            raise HTTPException(http_status_of(exc), str(exc)) from None
        store.audit(who["name"], "site.revoke", "ok", name)
        return {"site": name, "state": "revoked"}

    @api.get("/audit")
    async def audit(limit: int = 200, action: str | None = None, actor: str | None = None,
                    _who: dict = Depends(access.admin)):
        entries = store.audit_entries(max(1, min(limit, 2000)), action or None, actor or None)
        problems = store.verify_audit()
        return {"entries": [{k: _iso(v) for k, v in e.items()} for e in entries], "intact": not problems,
                "problems": problems[:50]}

    return api
