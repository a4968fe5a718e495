"""The coordinator's state: sites, researchers, jobs, per-site results, provenance.

SQLAlchemy Core on the coordinator's own ``MetaData`` (never the CDM's): SQLite by default, PostgreSQL
in production.  Everything a restart must not lose is written here before it is acted on: a job is
stored ``queued`` before any site is asked, so a coordinator that dies mid-job re-dispatches it when it
starts again (:meth:`Store.unfinished_jobs`).

Researcher tokens are stored only as SHA-256 hashes (they are 256-bit random, so a plain hash is not
guessable); site NATS passwords only as bcrypt hashes (what nats-server's config accepts).
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

from cdm.db import open_engine

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
    Column("state", String(16), nullable=False, default="active"),
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
    # pending | ok | refused | error | timeout | offline | bad_signature
    Column("status", String(16), nullable=False),
    Column("code", String(32)),
    Column("message", Text),
    Column("result", JSON),
    Column("elapsed_ms", Float),
    Column("received_at", DateTime),
)

ROLES = ("researcher", "admin")
FINISHED = ("done", "partial", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class StoreError(ValueError):
    """A store operation was asked for something that does not exist or already exists."""


class Store:
    def __init__(self, url_or_path) -> None:
        self.engine: Engine = open_engine(url_or_path)
        metadata.create_all(self.engine)

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
                raise StoreError(f"no site {name!r}")

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

    def add_researcher(self, name: str, role: str = "researcher") -> str:
        """Create a researcher and return their token (shown once; only its hash is kept)."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}")
        token = "rf_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.execute(select(researchers.c.name).where(researchers.c.name == name)).first():
                raise StoreError(f"researcher {name!r} already exists")
            conn.execute(insert(researchers).values(name=name, token_hash=token_hash(token), role=role,
                                                    created_at=utcnow(), state="active"))
        return token

    def researcher_for_token(self, token: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(researchers).where(researchers.c.token_hash == token_hash(token),
                                                         researchers.c.state == "active")).mappings().first()
        return dict(row) if row else None

    def researchers(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(researchers.c.name, researchers.c.role, researchers.c.created_at, researchers.c.state)
                .order_by(researchers.c.name)).mappings()]

    # ------------------------------------------------------------------ jobs

    def create_job(self, researcher: str, spec: dict, spec_hash: str, site_names: list[str], quorum: int,
                   timeout: float, hold_offline: float = 0.0) -> str:
        job_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(job_id=job_id, researcher=researcher, spec=spec, spec_hash=spec_hash,
                                             status="queued", sites=site_names, quorum=quorum, timeout=timeout,
                                             hold_offline=hold_offline,
                                             created_at=utcnow()))
        return job_id

    def start_job(self, job_id: str, requests: dict[str, str]) -> None:
        """Mark running and record one pending row per site with the request id it was sent."""
        with self.engine.begin() as conn:
            conn.execute(delete(job_sites).where(job_sites.c.job_id == job_id))
            if requests:
                conn.execute(insert(job_sites), [
                    {"job_id": job_id, "site": site, "request_id": rid, "status": "pending"}
                    for site, rid in requests.items()])
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(status="running"))

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
            rows = conn.execute(select(jobs.c.job_id).where(jobs.c.status.in_(("queued", "running")))
                                .order_by(jobs.c.created_at))
            return [r[0] for r in rows]
