"""The node's private bookkeeping (never in the CDM, never released): which patient sets were released
to whom, for the differencing defence.

Lives in ``[state] url`` of node.toml, else ``<data_dir>/node-state.sqlite``.  A released set is kept
as its sorted person ids, zlib-compressed int64 (site-private, like the CDM itself).
"""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
from sqlalchemy import func, BigInteger, Column, DateTime, Integer, LargeBinary, MetaData, String, Table, insert, select

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

_engines: dict[str, object] = {}


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
