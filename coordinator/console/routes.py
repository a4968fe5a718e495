"""The console's pages: sign-in, sites, the spec editor, jobs, a job's results, operator pages.

Every page but sign-in needs a live console session (a cookie holding a random session id; the
store keeps only its hash, bound to the token it was opened with).  A page for operators answers a
researcher with 403 and writes the refusal to the audit.  Pages read the store directly; what a page
*does* (submit, validate, dry run, enrol...) goes through the ``/v1`` API from ``static/console.js``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cdm import __version__
from coordinator.access import SESSION_COOKIE, SESSION_LIFETIME
from coordinator.report import cell_text
from coordinator.results import result_tables, sites_table
from coordinator.store import FINISHED, AuthError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PREFIX = "/console"
REASONS = {"expired": "Your token has expired: ask the coordinator operator for a new one.",
           "session": "Please sign in (your session ended or its token was revoked).",
           "signed-out": "You have signed out."}


def plotly_js() -> Path:
    """plotly.min.js as the installed ``plotly`` package ships it (never a copy in this repository)."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def _when(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        return value.replace("T", " ")[:19]
    return value.isoformat(sep=" ", timespec="seconds")


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith(PREFIX + "/") and "//" not in target else f"{PREFIX}/jobs"


def router(coordinator, access, visible_job) -> APIRouter:
    pages = APIRouter(prefix=PREFIX, include_in_schema=False)
    store = coordinator.store
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(when=_when, number=cell_text, tojson_pretty=lambda v: json.dumps(v, indent=2, default=str))

    def render(request: Request, name: str, who: dict | None, status: int = 200, **context) -> Response:
        response = templates.TemplateResponse(request, name, {"who": who, "version": __version__, "prefix": PREFIX,
                                                             **context}, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-eval'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        return response

    def signed_in(request: Request, admin: bool = False) -> tuple[dict | None, Response | None]:
        """(who, None) or (None, the response to send instead: sign-in redirect or 403 page)."""
        session = request.cookies.get(SESSION_COOKIE)
        try:
            if not session:
                raise AuthError("not signed in")
            who = store.session_researcher(session)
        except AuthError as exc:
            reason = "expired" if "expired" in str(exc) and "token" in str(exc) else "session"
            target = f"{PREFIX}/sign-in?reason={reason}&next={quote(request.url.path)}"
            response = RedirectResponse(target, 303)
            if session:
                response.delete_cookie(SESSION_COOKIE, path="/")
            return None, response
        if admin and who["role"] != "admin":
            store.audit(who["name"], "operator.refused", "refused", request.url.path, f"role {who['role']!r}")
            return None, render(request, "forbidden.html", who, 403, title="Not allowed")
        return who, None

    # ------------------------------------------------------------------ static and sign-in

    @pages.get("/static/plotly.min.js")
    async def plotly_bundle():
        return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @pages.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:
            return Response("not found", 404)
        media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}.get(path.suffix, "text/plain")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @pages.get("/")
    async def home(request: Request):
        return RedirectResponse(f"{PREFIX}/jobs", 303)

    @pages.get("/sign-in")
    async def sign_in_form(request: Request, reason: str | None = None, next: str | None = None):
        return render(request, "sign_in.html", None, title="Sign in", message=REASONS.get(reason or ""),
                      next=_safe_next(next))

    @pages.post("/sign-in")
    async def sign_in(request: Request, token: str = Form(""), next: str = Form("")):
        try:
            session, who = store.open_session(token.strip(), SESSION_LIFETIME)
        except AuthError as exc:
            store.audit("-", "console.sign_in", "refused", None, str(exc))
            return render(request, "sign_in.html", None, 401, title="Sign in", error=str(exc), next=_safe_next(next))
        store.audit(who["name"], "console.sign_in", "ok")
        response = RedirectResponse(_safe_next(next), 303)
        response.set_cookie(SESSION_COOKIE, session, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @pages.post("/sign-out")
    async def sign_out(request: Request):
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            store.close_session(session)
        response = RedirectResponse(f"{PREFIX}/sign-in?reason=signed-out", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ researcher pages

    @pages.get("/sites")
    async def sites_page(request: Request):
        who, refusal = signed_in(request)
        if refusal:
            return refusal
        return render(request, "sites.html", who, title="Sites", sites=coordinator.sites_view())

    @pages.get("/new")
    async def editor_page(request: Request, from_job: str | None = None):
        who, refusal = signed_in(request)
        if refusal:
            return refusal
        from coordinator.api_specs import examples

        start = ""
        if from_job:  # "run again / edit": start from a visible job's spec
            job = store.job(from_job)
            if job is not None and (who["role"] == "admin" or job["researcher"] == who["name"]):
                import yaml

                start = yaml.safe_dump(job["spec"], sort_keys=False)
        return render(request, "editor.html", who, title="New query", examples=examples(), start=start,
                      sites=coordinator.sites_view())

    @pages.get("/jobs")
    async def jobs_page(request: Request, all: bool = False):
        who, refusal = signed_in(request)
        if refusal:
            return refusal
        everyone = all and who["role"] == "admin"
        return render(request, "jobs.html", who, title="Jobs", everyone=everyone,
                      jobs=store.jobs(None if everyone else who["name"], 200))

    @pages.get("/jobs/{job_id}")
    async def job_page(request: Request, job_id: str):
        who, refusal = signed_in(request)
        if refusal:
            return refusal
        job = store.job(job_id)
        if job is None or (who["role"] != "admin" and job["researcher"] != who["name"]):
            return render(request, "not_found.html", who, 404, title="No such job", what=f"job {job_id}")
        finished = job["status"] in FINISHED
        return render(request, "job.html", who, title=f"Job {job_id[:8]}", job=job, finished=finished,
                      tables=result_tables(job) if finished else [], sites=sites_table(job),
                      provenance=job.get("provenance") or {})

    # ------------------------------------------------------------------ operator pages

    @pages.get("/operator/researchers")
    async def researchers_page(request: Request):
        who, refusal = signed_in(request, admin=True)
        if refusal:
            return refusal
        return render(request, "researchers.html", who, title="Researchers and tokens", researchers=store.researchers())

    @pages.get("/operator/sites")
    async def enrol_page(request: Request):
        who, refusal = signed_in(request, admin=True)
        if refusal:
            return refusal
        return render(request, "enrol.html", who, title="Enrol a site", sites=coordinator.sites_view(),
                      bus=coordinator.home.public_nats_url)

    @pages.get("/operator/audit")
    async def audit_page(request: Request, action: str | None = None, actor: str | None = None):
        who, refusal = signed_in(request, admin=True)
        if refusal:
            return refusal
        problems = store.verify_audit()
        return render(request, "audit.html", who, title="Coordinator audit", problems=problems,
                      entries=store.audit_entries(500, action or None, actor or None), action=action or "",
                      actor=actor or "")

    return pages
