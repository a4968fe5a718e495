"""The node's private bookkeeping (never in the CDM, never released): which patient sets were released
to whom, for the differencing defence; requests awaiting the site's approval (node/approvals.py);
the privacy budget each requester has spent (node/noise.py).

Lives in ``[state] url`` of node.toml, else ``<data_dir>/node-state.sqlite``.  A released set is kept
as its sorted person ids, zlib-compressed int64 (site-private, like the CDM itself).
"""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
from sqlalchemy import (
    func, BigInteger, Boolean, Column, DateTime, Float, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint,
    insert, select,
)

from cdm.db import open_engine

state_metadata = MetaData()
released = Table(
    "released_cohort", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester", String(255), nullable=False, index=True),
    Column("cohort_hash", String(64), nullable=False),
    Column("n", BigInteger, nullable=False, index=True),
    Column("person_ids", LargeBinary, nullable=False),
    Column("released_at", DateTime, nullable=False),
)

requests_seen = Table(
    "request_seen", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester", String(255), nullable=False, index=True),
    Column("at", DateTime, nullable=False, index=True),
)

approval_requests = Table(
    "approval_request", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("approval_key", String(64), nullable=False),  # cdm.spec.approval_key: the spec without beta
    Column("requester", String(255), nullable=False),
    Column("analysis_type", String(32), nullable=False),
    Column("summary", Text, nullable=False),
    Column("spec", Text, nullable=False),  # canonical JSON, for the administrator to read in full
    Column("status", String(16), nullable=False, index=True),  # pending | approved | denied
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    Column("times_asked", Integer, nullable=False),
    Column("decided_at", DateTime),
    Column("decided_by", String(255)),
    Column("note", Text),
    UniqueConstraint("approval_key", "requester", name="uq_approval_key_requester"),
)

released_cells = Table(  # node.policy.recoverable_cells: every count cell released (or suppressed) to a requester
    "released_cell", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester", String(255), nullable=False, index=True),
    Column("request_id", String(64)),
    Column("hidden", Boolean, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("person_ids", LargeBinary, nullable=False),
    Column("released_at", DateTime, nullable=False),
)

privacy_budget = Table(
    "privacy_budget", state_metadata,
    Column("requester", String(255), primary_key=True),
    Column("epsilon_spent", Float, nullable=False),
    Column("delta_spent", Float, nullable=False),
    Column("queries", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

_engines: dict[str, object] = {}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def state_engine(config):
    url = config.section("state").get("url")
    if not url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        url = str(config.data_dir / "node-state.sqlite")
    if url not in _engines:
        engine = open_engine(url)
        state_metadata.create_all(engine)
        _engines[url] = engine
    return _engines[url]


def _pack(ids: np.ndarray) -> bytes:
    return zlib.compress(np.asarray(ids, dtype="<i8").tobytes())


def _unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype="<i8")


def nearest_difference(engine, requester: str, ids: np.ndarray, k: int) -> int | None:
    """Smallest non-zero |symmetric difference| (< k) between ``ids`` and a set released to ``requester``.

    Only sets with ``|n - n'| < k`` can be that close, so the rest are never read."""
    ids = np.unique(ids)
    n = len(ids)
    with engine.connect() as conn:
        rows = conn.execute(select(released.c.person_ids).where(
            released.c.requester == requester, released.c.n > n - k, released.c.n < n + k)).scalars()
        best = None
        for blob in rows:
            other = _unpack(blob)
            d = len(np.setxor1d(ids, other, assume_unique=True))
            if 0 < d < k and (best is None or d < best):
                best = d
    return best


def record_release(engine, requester: str, cohort_hash: str, ids: np.ndarray) -> None:
    ids = np.unique(ids)
    with engine.begin() as conn:
        conn.execute(insert(released).values(requester=requester, cohort_hash=cohort_hash, n=len(ids),
                                             person_ids=_pack(ids),
                                             released_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)))


def count_and_note_request(engine, requester: str, window_seconds: int = 3600) -> int:
    """Note one request by ``requester``; return how many it made in the last ``window_seconds``."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(insert(requests_seen).values(requester=requester, at=now))
        return conn.execute(select(func.count()).select_from(requests_seen).where(
            requests_seen.c.requester == requester,
            requests_seen.c.at > now - dt.timedelta(seconds=window_seconds))).scalar_one()


def released_cell_sets(engine, requester: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(released, suppressed) person sets of every count cell this requester has been given."""
    shown, hidden = [], []
    with engine.connect() as conn:
        for is_hidden, blob in conn.execute(select(released_cells.c.hidden, released_cells.c.person_ids)
                                            .where(released_cells.c.requester == requester)
                                            .order_by(released_cells.c.id)):
            (hidden if is_hidden else shown).append(_unpack(blob))
    return shown, hidden


def has_small_hidden_cell(engine, requester: str, min_cell_count: int) -> bool:
    """Whether any cell of 1..min_cell_count-1 persons was suppressed for ``requester`` (else there is
    nothing a later release could disclose, and the audit needs no history)."""
    c = released_cells.c
    with engine.connect() as conn:
        return conn.execute(select(c.id).where(c.requester == requester, c.hidden, c.n > 0, c.n < min_cell_count)
                            .limit(1)).first() is not None


def record_cell_sets(engine, requester: str, request_id, shown: list, hidden: list) -> None:
    now = utcnow()
    rows = [dict(requester=requester, request_id=None if request_id is None else str(request_id)[:64],
                 hidden=is_hidden, n=len(ids), person_ids=_pack(np.unique(ids)), released_at=now)
            for is_hidden, sets in ((False, shown), (True, hidden)) for ids in sets]
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(released_cells), rows)
