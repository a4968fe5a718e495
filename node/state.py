"""The node's private bookkeeping (never in the CDM, never released): which patient sets were released
to whom, for the differencing defence; requests awaiting the site's approval (node/disclosure/approvals.py);
the privacy budget each requester has spent (node/disclosure/noise.py).

Lives in ``[state] url`` of node.toml, else ``<data_dir>/node-state.sqlite``.  A released set is kept
as its sorted person ids (site-private, like the CDM itself), delta-encoded in the narrowest unsigned
integer type that holds the gaps and zlib-compressed at level 1 (sets written before this format, a
zlib stream of int64, are still read), with the SHA-256 ``digest`` of the sorted ids beside it, so
that a set already released to the same requester is recognised by one indexed look-up instead of
being compared, packed and stored again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import zlib

import numpy as np
from sqlalchemy import (
    func, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    UniqueConstraint, delete, insert, inspect, select, text,
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
    Column("digest", String(64)),  # set_digest(person ids); added in place to older state databases
    # the differencing check reads one requester's sets of about the same size, an exact repeat by digest
    Index("ix_released_cohort_requester_n", "requester", "n"),
    Index("ix_released_cohort_requester_digest", "requester", "digest"),
)

requests_seen = Table(
    "request_seen", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester", String(255), nullable=False, index=True),
    Column("at", DateTime, nullable=False, index=True),
    Index("ix_request_seen_requester_at", "requester", "at"),  # the rate limit counts one requester's hour
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

released_cells = Table(  # node.disclosure.policy.recoverable_cells: every count cell released (or suppressed) to a requester
    "released_cell", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester", String(255), nullable=False, index=True),
    Column("request_id", String(64)),
    Column("hidden", Boolean, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("person_ids", LargeBinary, nullable=False),
    Column("released_at", DateTime, nullable=False),
    Column("digest", String(64)),  # set_digest(person ids); added in place to older state databases
    Index("ix_released_cell_requester_digest", "requester", "digest"),
)

audited_releases = Table(  # node/disclosure/release_history.py: the site-wide release auditor's history
    "audited_release", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("period", Integer, nullable=False, index=True),
    Column("release", Integer, nullable=False),  # rows of one release share this number
    Column("requester", String(255), nullable=False),
    Column("request_id", String(64)),
    Column("hidden", Boolean, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("person_ids", LargeBinary, nullable=False),
    Column("released_at", DateTime, nullable=False),
)

release_periods = Table(  # ``radfed-node audit new-period``: the auditor's history starts again
    "release_period", state_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime, nullable=False),
    Column("started_by", String(255), nullable=False),
    Column("note", Text),
)

request_nonces = Table(  # node/disclosure/requests.py: each signed request runs once, kept until it expires
    "request_nonce", state_metadata,
    Column("nonce", String(128), primary_key=True),
    Column("request_id", String(64)),
    Column("requester", String(255)),
    Column("expires_at", Float, nullable=False, index=True),
)

privacy_budget = Table(
    "privacy_budget", state_metadata,
    Column("requester", String(255), primary_key=True),
    Column("epsilon_spent", Float, nullable=False),
    Column("delta_spent", Float, nullable=False),
    Column("queries", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

secure_sessions = Table(  # node/secure.py Ledger: every secure context this node masked, one share each, kept
    "secure_session", state_metadata,
    Column("context", String(64), primary_key=True),  # SHA-256 of (session, spec, peers, site)
    Column("share_digest", String(64), nullable=False),  # SHA-256 of the unmasked vector (never the vector)
    Column("at", DateTime, nullable=False),
)

secure_peer_keys = Table(  # node/secure.py: the Ed25519 key each peer site's key certificates must be signed by
    "secure_peer_key", state_metadata,
    Column("site", String(64), primary_key=True),
    Column("signing_key", String(64), nullable=False),
    Column("pinned_at", DateTime, nullable=False),
)

_engines: dict[str, object] = {}
_engines_lock = threading.Lock()

#: Serialises check-then-record of the differencing defence and the linked-release audit inside one
#: node process (the agent answers up to ``[bus] max_concurrent`` requests in threads): two requests
#: of one requester must not both pass against a history that holds neither of them.
release_lock = threading.Lock()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def state_engine(config):
    url = config.section("state").get("url")
    if not url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        url = str(config.data_dir / "node-state.sqlite")
    with _engines_lock:
        if url not in _engines:
            engine = open_engine(url)
            state_metadata.create_all(engine)
            upgrade(engine)
            _engines[url] = engine
    return _engines[url]


# tables that gained a ``digest`` column after state databases were already in use at sites
_DIGESTED = (released, released_cells)


def upgrade(engine) -> None:
    """Bring a state database written by an earlier release up to this schema, keeping its history
    (the differencing defence is only as good as the record of what was released): add the
    ``digest`` columns, fill them from the stored sets, and create indexes added since."""
    names = {t.name for t in _DIGESTED}
    columns = {name: {c["name"] for c in inspect(engine).get_columns(name)} for name in names}
    for table in _DIGESTED:
        if "digest" in columns[table.name]:
            continue
        with engine.begin() as conn:  # fixed identifiers only: nothing here comes from a request
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN digest VARCHAR(64)"))
            for row_id, blob in conn.execute(select(table.c.id, table.c.person_ids)).all():
                conn.execute(table.update().where(table.c.id == row_id).values(digest=set_digest(_unpack(blob))))
    for table in state_metadata.tables.values():
        for index in table.indexes:
            index.create(engine, checkfirst=True)


# -- person sets ----------------------------------------------------------------------------------

_FORMAT_DELTA = 1  # first byte of a packed set: version of the layout that follows
_WIDTHS = (np.uint8, np.uint16, np.uint32, np.uint64)


def person_set(ids) -> np.ndarray:
    """Sorted, distinct int64 person ids (what every function here takes)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):  # a cohort frame is already in person order
        return ids
    return np.unique(ids)


def set_digest(ids: np.ndarray) -> str:
    """SHA-256 of the sorted distinct ids (little-endian int64): equal digests, equal sets."""
    return hashlib.sha256(np.ascontiguousarray(person_set(ids), dtype="<i8").tobytes()).hexdigest()


def _pack(ids: np.ndarray) -> bytes:
    """Layout 1: ``[1][width code][first id: int64][gaps in the narrowest uint]``, zlib level 1.

    Ids of one cohort are dense (gaps of 1-10 fit a byte), so this is ~8x smaller before compression
    and ~40x faster to write than zlib's default level on the raw int64s (50,000 ids: ~1 ms)."""
    ids = person_set(ids)
    if ids.size == 0:
        return bytes([_FORMAT_DELTA, 0])
    gaps = np.diff(ids).astype(np.uint64)
    code = next(i for i, w in enumerate(_WIDTHS) if gaps.size == 0 or int(gaps.max()) <= np.iinfo(w).max)
    body = np.asarray(ids[:1], dtype="<i8").tobytes() + gaps.astype(np.dtype(_WIDTHS[code]).newbyteorder("<")).tobytes()
    return bytes([_FORMAT_DELTA, code]) + zlib.compress(body, 1)


def _unpack(blob: bytes) -> np.ndarray:
    blob = bytes(blob)
    if blob[:1] != bytes([_FORMAT_DELTA]):  # before layout 1: a zlib stream (0x78...) of int64
        return np.frombuffer(zlib.decompress(blob), dtype="<i8")
    if len(blob) == 2:
        return np.zeros(0, dtype=np.int64)
    body = zlib.decompress(blob[2:])
    first = np.frombuffer(body[:8], dtype="<i8")
    gaps = np.frombuffer(body[8:], dtype=np.dtype(_WIDTHS[blob[1]]).newbyteorder("<")).astype(np.int64)
    return np.concatenate([first, first[0] + np.cumsum(gaps)]).astype(np.int64)


pack_ids, unpack_ids = _pack, _unpack  # for the other stores of person sets (node/disclosure)


def symmetric_difference_size(a: np.ndarray, b: np.ndarray) -> int:
    """``|a ^ b|`` of two sorted distinct arrays, by binary search (no concatenate-and-sort)."""
    if a.size == 0 or b.size == 0:
        return int(a.size + b.size)
    pos = np.searchsorted(b, a)
    common = int((b[np.minimum(pos, b.size - 1)] == a).sum())
    return int(a.size + b.size - 2 * common)


def already_released(engine, requester: str, digest: str) -> bool:
    """Whether exactly this person set was released to ``requester`` before."""
    with engine.connect() as conn:
        return conn.execute(select(released.c.id).where(released.c.requester == requester,
                                                        released.c.digest == digest).limit(1)).first() is not None


def nearest_difference(engine, requester: str, ids: np.ndarray, k: int) -> int | None:
    """Smallest non-zero |symmetric difference| (< k) between ``ids`` and a set released to ``requester``.

    Only sets with ``|n - n'| < k`` can be that close, so the rest are never read."""
    ids = person_set(ids)
    n = len(ids)
    with engine.connect() as conn:
        rows = conn.execute(select(released.c.person_ids).where(
            released.c.requester == requester, released.c.n > n - k, released.c.n < n + k)).scalars()
        best = None
        for blob in rows:
            d = symmetric_difference_size(ids, _unpack(blob))
            if 0 < d < k and (best is None or d < best):
                best = d
    return best


def record_release(engine, requester: str, cohort_hash: str, ids: np.ndarray, digest: str | None = None) -> None:
    ids = person_set(ids)
    with engine.begin() as conn:
        conn.execute(insert(released).values(requester=requester, cohort_hash=cohort_hash, n=len(ids),
                                             person_ids=_pack(ids), digest=digest or set_digest(ids),
                                             released_at=utcnow()))


# rate-limit rows older than this are deleted as new ones arrive (the window is at most an hour)
REQUEST_LOG_KEEP = dt.timedelta(days=1)


def count_and_note_request(engine, requester: str, window_seconds: int = 3600) -> int:
    """Note one request by ``requester``; return how many it made in the last ``window_seconds``."""
    now = utcnow()
    with engine.begin() as conn:
        row_id = conn.execute(insert(requests_seen).values(requester=requester, at=now)).inserted_primary_key[0]
        if row_id % 256 == 0:  # now and then (one request in 256): the table must not grow forever
            conn.execute(delete(requests_seen).where(requests_seen.c.at < now - REQUEST_LOG_KEEP))
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
    """Record the cells of one release; a cell whose exact person set (and shown/hidden state) this
    requester already has is one equation the audit already holds, and is not stored twice."""
    now = utcnow()
    c = released_cells.c
    cells = {}
    for is_hidden, sets in ((False, shown), (True, hidden)):
        for ids in sets:
            ids = person_set(ids)
            cells.setdefault((is_hidden, set_digest(ids)), ids)
    if not cells:
        return
    with engine.begin() as conn:
        known = {(bool(h), d) for h, d in conn.execute(select(c.hidden, c.digest).where(
            c.requester == requester, c.digest.in_(sorted({d for _, d in cells}))))}
        rows = [dict(requester=requester, request_id=None if request_id is None else str(request_id)[:64],
                     hidden=is_hidden, n=len(ids), person_ids=_pack(ids), digest=digest, released_at=now)
                for (is_hidden, digest), ids in cells.items() if (bool(is_hidden), digest) not in known]
        if rows:
            conn.execute(insert(released_cells), rows)
