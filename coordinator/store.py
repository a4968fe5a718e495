"""The coordinator's state: sites, researchers, jobs, per-site results, provenance.

SQLAlchemy Core on the coordinator's own ``MetaData`` (never the CDM's): SQLite by default, PostgreSQL
in production.  Everything a restart must not lose is written here before it is acted on: a job is
stored ``queued`` before any site is asked, so a coordinator that dies mid-job re-dispatches it when it
starts again (:meth:`Store.unfinished_jobs`).

Researcher tokens are stored only as SHA-256 hashes (they are 256-bit random, so a plain hash is not
guessable); site NATS passwords only as bcrypt hashes (what nats-server's config accepts).  A token may
expire (``expires_at``) and is revoked by the operator; the web console's sign-in sessions are bound to
the token they were opened with, so revoking or expiring the token ends them too.

The coordinator's own audit trail (``coord_audit``) is append-only and hash-chained like a node's:
each entry's hash covers the previous entry's, so an edited, removed or reordered entry shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.schema import DDL

from cdm.db import open_engine
from cdm.errors import BadInput
from cdm.messages import FINISHED as FINISHED_JOBS
from cdm.messages import JobStatus, SiteStatus
from cdm.records import JobRecord, ValidationError, problems

metadata = MetaData()

sites = Table(
    "coord_site", metadata,
    Column("name", String(64), primary_key=True),
    Column("public_key", String(100), nullable=False),
    Column("nats_password_hash", String(100), nullable=False),
    Column("enrolled_at", DateTime, nullable=False),
    Column("state", String(16), nullable=False, default="enrolled"),  # enrolled | revoked
    Column("last_seen", Float),   # epoch seconds of the last verified heartbeat
    Column("version", String(32)),
    Column("heartbeat", JSON),
)

researchers = Table(
    "coord_researcher", metadata,
    Column("name", String(120), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # researcher | admin
    Column("created_at", DateTime, nullable=False),
    Column("state", String(16), nullable=False, default="active"),  # active | revoked
    Column("expires_at", DateTime),  # None: never (UTC, naive)
)

console_sessions = Table(
    "coord_console_session", metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("researcher", String(120), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False),  # the session ends when this token stops working
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

audit = Table(
    "coord_audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime, nullable=False),
    Column("actor", String(120), nullable=False),   # a researcher's name, or "-" for an unknown caller
    Column("action", String(40), nullable=False, index=True),
    Column("target", String(200)),
    Column("outcome", String(16), nullable=False),  # ok | refused
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

jobs = Table(
    "coord_job", metadata,
    Column("job_id", String(36), primary_key=True),
    Column("researcher", String(120), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # queued | running | done | partial | failed
    Column("sites", JSON, nullable=False),     # names asked
    Column("quorum", Integer, nullable=False),
    Column("timeout", Float, nullable=False),
    Column("hold_offline", Float, nullable=False, default=0.0),  # seconds to wait for offline sites to return
    Column("created_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("message", Text),
    Column("pooled", JSON),
    Column("provenance", JSON),
)

job_sites = Table(
    "coord_job_site", metadata,
    Column("job_id", String(36), ForeignKey("coord_job.job_id", ondelete="CASCADE"), primary_key=True),
    Column("site", String(64), primary_key=True),
    Column("request_id", String(36), nullable=False),
    # cdm.messages.SiteStatus: pending | waiting | ok | refused | error | timeout | offline | bad_signature
    Column("status", String(16), nullable=False),
    Column("code", String(32)),
    Column("message", Text),
    Column("result", JSON),
    Column("elapsed_ms", Float),
    Column("received_at", DateTime),
)

ROLES = ("researcher", "admin")
FINISHED = tuple(str(s) for s in FINISHED_JOBS)
GENESIS = "0" * 64
#: Columns added after a table was first released: created on an older store when it is opened.
ADDED_COLUMNS = ((researchers, "expires_at"),)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class StoreError(BadInput, ValueError):
    """A store operation was asked for something that does not exist or already exists."""


class NotFound(StoreError):
    """The store has no such site or researcher (the API answers 404)."""

    http_status = 404


class AuthError(StoreError):
    """A token or console session that does not (or no longer) open the API; the message says why."""

    http_status = 401


def _add_missing_columns(engine: Engine) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of :data:`ADDED_COLUMNS` an older store lacks (names and
    types from the table definitions here, never from input)."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    for table, name in ADDED_COLUMNS:
        if name in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        column = table.c[name]
        with engine.begin() as conn:
            conn.execute(DDL(f"ALTER TABLE {table.name} ADD COLUMN {name} {column.type.compile(engine.dialect)}"))


def _audit_hash(prev: str, entry: dict) -> str:
    body = [prev, entry["time"].isoformat(), entry["actor"], entry["action"], entry.get("target") or "",
            entry["outcome"], entry.get("detail") or ""]
    return hashlib.sha256("\x1f".join(body).encode("utf-8")).hexdigest()


class Store:
    def __init__(self, url_or_path) -> None:
        self.engine: Engine = open_engine(url_or_path)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    # ------------------------------------------------------------------ sites

    def add_site(self, name: str, public_key: str, nats_password_hash: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(select(sites.c.name).where(sites.c.name == name)).first():
                raise StoreError(f"site {name!r} is already enrolled (revoke it first to re-enroll)")
            conn.execute(insert(sites).values(name=name, public_key=public_key, nats_password_hash=nats_password_hash,
                                              enrolled_at=utcnow(), state="enrolled"))

    def revoke_site(self, name: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(delete(sites).where(sites.c.name == name)).rowcount == 0:
                raise NotFound(f"no site {name!r}")

    def site(self, name: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(sites).where(sites.c.name == name)).mappings().first()
        return dict(row) if row else None

    def sites(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(sites).order_by(sites.c.name)).mappings()]

    def public_keys(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sites.c.name, sites.c.public_key).where(sites.c.state == "enrolled"))
            return {name: key for name, key in rows}

    def record_heartbeat(self, name: str, beat: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(sites).where(sites.c.name == name).values(
                last_seen=float(beat.get("time") or 0), version=str(beat.get("version"))[:32], heartbeat=beat))

    # ------------------------------------------------------------------ researchers

    def add_researcher(self, name: str, role: str = "researcher", expires_at: dt.datetime | None = None) -> str:
        """Create a researcher and return their token (shown once; only its hash is kept).  A token
        with ``expires_at`` (UTC) stops working then; a revoked researcher's name can be added again
        with a new token."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}")
        name = name.strip() if isinstance(name, str) else ""
        if not name or len(name) > 120 or any(ch.isspace() and ch != " " for ch in name):
            raise StoreError("a researcher's name is 1 to 120 characters on one line")
        token = "rf_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            existing = conn.execute(select(researchers.c.state).where(researchers.c.name == name)).first()
            if existing and existing[0] == "active":
                raise StoreError(f"researcher {name!r} already exists (revoke the token first to issue a new one)")
            values = dict(token_hash=token_hash(token), role=role, created_at=utcnow(), state="active",
                          expires_at=expires_at)
            if existing:
                conn.execute(update(researchers).where(researchers.c.name == name).values(**values))
            else:
                conn.execute(insert(researchers).values(name=name, **values))
        return token

    def authenticate(self, token: str) -> dict:
        """The researcher whose token this is, or :class:`AuthError` saying why not."""
        with self.engine.connect() as conn:
            row = conn.execute(select(researchers).where(researchers.c.token_hash == token_hash(token))).mappings().first()
        if row is None or row["state"] != "active":
            raise AuthError("unknown or revoked token")
        if row["expires_at"] is not None and row["expires_at"] <= utcnow():
            raise AuthError(f"token expired on {row['expires_at'].isoformat(sep=' ', timespec='minutes')} UTC: "
                            "ask the coordinator operator for a new one")
        return dict(row)

    def researcher_for_token(self, token: str) -> dict | None:
        try:
            return self.authenticate(token)
        except AuthError:
            return None

    def revoke_researcher(self, name: str) -> None:
        """The researcher's token stops working at once, and every console session opened with it."""
        with self.engine.begin() as conn:
            if conn.execute(update(researchers).where(researchers.c.name == name, researchers.c.state == "active")
                            .values(state="revoked")).rowcount == 0:
                raise NotFound(f"no active researcher {name!r}")
            conn.execute(delete(console_sessions).where(console_sessions.c.researcher == name))

    def researchers(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(researchers.c.name, researchers.c.role, researchers.c.created_at, researchers.c.state,
                       researchers.c.expires_at)
                .order_by(researchers.c.name)).mappings()]

    # ------------------------------------------------------------------ console sessions

    def open_session(self, token: str, lifetime: dt.timedelta) -> tuple[str, dict]:
        """(session id, researcher) for a valid ``token``: the id goes into the browser's cookie, only
        its hash is kept, and the session never outlives the token."""
        who = self.authenticate(token)
        session = secrets.token_urlsafe(32)
        expires = utcnow() + lifetime
        if who["expires_at"] is not None:
            expires = min(expires, who["expires_at"])
        with self.engine.begin() as conn:
            conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= utcnow()))
            conn.execute(insert(console_sessions).values(session_hash=token_hash(session), researcher=who["name"],
                                                         token_hash=who["token_hash"], created_at=utcnow(),
                                                         expires_at=expires))
        return session, who

    def session_researcher(self, session: str) -> dict:
        """The researcher of a live console session, or :class:`AuthError`."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(console_sessions.c.expires_at.label("session_expires"), researchers)
                .join(researchers, researchers.c.name == console_sessions.c.researcher)
                .where(console_sessions.c.session_hash == token_hash(session),
                       researchers.c.token_hash == console_sessions.c.token_hash)).mappings().first()
        if row is None or row["state"] != "active":
            raise AuthError("not signed in (or the session's token was revoked)")
        if row["expires_at"] is not None and row["expires_at"] <= utcnow():
            raise AuthError("token expired: ask the coordinator operator for a new one")
        if row["session_expires"] <= utcnow():
            raise AuthError("the session has expired: sign in again")
        return {k: row[k] for k in ("name", "role", "state", "token_hash")}

    def close_session(self, session: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(console_sessions).where(console_sessions.c.session_hash == token_hash(session)))

    # ------------------------------------------------------------------ the coordinator's audit trail

    def audit(self, actor: str, action: str, outcome: str = "ok", target: str | None = None,
              detail: str | None = None) -> None:
        """Append one entry, chained to the previous one."""
        entry = {"time": utcnow(), "actor": (actor or "-")[:120], "action": action[:40],
                 "target": None if target is None else str(target)[:200], "outcome": outcome,
                 "detail": None if detail is None else str(detail)[:2000]}
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # one writer at a time, so the chain has no forks
                conn.execute(DDL("LOCK TABLE coord_audit IN EXCLUSIVE MODE"))
            last = conn.execute(select(audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).scalar()
            prev = last or GENESIS
            conn.execute(insert(audit).values(**entry, prev_hash=prev, hash=_audit_hash(prev, entry)))

    def audit_entries(self, limit: int = 200, action: str | None = None, actor: str | None = None) -> list[dict]:
        query = select(audit).order_by(audit.c.seq.desc()).limit(limit)
        if action:
            query = query.where(audit.c.action == action)
        if actor:
            query = query.where(audit.c.actor == actor)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def verify_audit(self) -> list[str]:
        """Problems in the chain (empty: intact)."""
        problems, prev = [], GENESIS
        with self.engine.connect() as conn:
            for row in conn.execute(select(audit).order_by(audit.c.seq)).mappings():
                if row["prev_hash"] != prev:
                    problems.append(f"entry {row['seq']}: does not follow the previous entry (removed or reordered?)")
                if _audit_hash(row["prev_hash"], dict(row)) != row["hash"]:
                    problems.append(f"entry {row['seq']}: content does not match its hash (edited?)")
                prev = row["hash"]
        return problems

    # ------------------------------------------------------------------ jobs

    def create_job(self, researcher: str, spec: dict, spec_hash: str, site_names: list[str], quorum: int,
                   timeout: float, hold_offline: float = 0.0, options: dict | None = None) -> str:
        """``options``: what the submission asked besides sites and quorum (``secure``), kept in the
        provenance until the job finishes."""
        job_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(job_id=job_id, researcher=researcher, spec=spec, spec_hash=spec_hash,
                                             status=JobStatus.QUEUED.value, sites=site_names, quorum=quorum, timeout=timeout,
                                             hold_offline=hold_offline, provenance={"options": options or {}},
                                             created_at=utcnow()))
        return job_id

    def start_job(self, job_id: str, requests: dict[str, str]) -> None:
        """Mark running and record one pending row per site with the request id it was sent."""
        with self.engine.begin() as conn:
            conn.execute(delete(job_sites).where(job_sites.c.job_id == job_id))
            if requests:
                conn.execute(insert(job_sites), [
                    {"job_id": job_id, "site": site, "request_id": rid, "status": SiteStatus.PENDING.value}
                    for site, rid in requests.items()])
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(status=JobStatus.RUNNING.value))

    def record_site(self, job_id: str, site: str, status: str, code: str | None, message: str | None,
                    result, elapsed_ms: float | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(job_sites).where(job_sites.c.job_id == job_id, job_sites.c.site == site).values(
                status=status, code=code, message=message, result=result, elapsed_ms=elapsed_ms,
                received_at=utcnow()))

    def finish_job(self, job_id: str, status: str, message: str, pooled, provenance: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(
                status=status, message=message, pooled=pooled, provenance=provenance, finished_at=utcnow()))

    def job(self, job_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
            if row is None:
                return None
            job = dict(row)
            job["per_site"] = [dict(r) for r in conn.execute(
                select(job_sites).where(job_sites.c.job_id == job_id).order_by(job_sites.c.site)).mappings()]
        try:  # the record's shape (cdm.records.JobRecord): a damaged row fails here, not in a report
            JobRecord.model_validate(job)
        except ValidationError as exc:
            raise StoreError(f"job {job_id} is damaged in the store: {problems(exc)}") from None
        return job

    def jobs(self, researcher: str | None = None, limit: int = 50) -> list[dict]:
        query = select(jobs.c.job_id, jobs.c.researcher, jobs.c.status, jobs.c.created_at, jobs.c.finished_at,
                       jobs.c.sites, jobs.c.message, jobs.c.spec).order_by(jobs.c.created_at.desc()).limit(limit)
        if researcher is not None:
            query = query.where(jobs.c.researcher == researcher)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def unfinished_jobs(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.job_id).where(jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)))
                                .order_by(jobs.c.created_at))
            return [r[0] for r in rows]
