"""The site's release history, kept for :mod:`node.disclosure.auditor` across all researchers.

Every person set whose sums left the node (and every suppressed small cell, and every cohort refused
as "< k") is stored in the node's state database, table ``audited_release``, by *release period*.
Each process keeps one :class:`~node.disclosure.auditor.ReleaseAuditor` per state database and
minimum cell size, and before each audit reads the rows other processes added since (a CLI dry run
and the bus agent share one history).  A new release period (``radfed-node audit new-period``, e.g.
with a new data snapshot) starts an empty history: what was released before stays released, so a
site administrator does this only when the old releases no longer describe the same persons'
values (docs/node-policy.md).
"""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import func, insert, select

from node import state
from node.disclosure.auditor import ReleaseAuditor
from node.disclosure.policy import Refusal

T = state.audited_releases
PERIODS = state.release_periods

_cache: dict[tuple, tuple[ReleaseAuditor, int, int]] = {}  # (url, k) -> (auditor, period, last row id)
_cache_lock = threading.Lock()


def current_period(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(PERIODS.c.id), 0))).scalar_one())


def new_period(engine, by: str, note: str | None = None) -> int:
    with engine.begin() as conn:
        period = conn.execute(insert(PERIODS).values(started_at=state.utcnow(), started_by=by[:255],
                                                     note=note)).inserted_primary_key[0]
    return int(period)


def _auditor(engine, min_cell: int) -> ReleaseAuditor:
    """This process's auditor for ``engine``, brought up to date with the stored history."""
    key = (str(engine.url), min_cell)
    period = current_period(engine)
    with _cache_lock:
        auditor, cached_period, last = _cache.get(key, (None, -1, 0))
        if auditor is None or cached_period != period:
            auditor, last = ReleaseAuditor(min_cell), 0
        with engine.connect() as conn:
            rows = conn.execute(select(T.c.id, T.c.release, T.c.hidden, T.c.person_ids)
                                .where(T.c.period == period, T.c.id > last).order_by(T.c.id)).all()
        batch: dict[int, tuple[list, list]] = {}
        for row_id, release, hidden, blob in rows:
            batch.setdefault(release, ([], []))[1 if hidden else 0].append(state.unpack_ids(blob))
            last = row_id
        for shown, hidden in batch.values():
            auditor.commit(shown, hidden)
        _cache[key] = (auditor, period, last)
        return auditor


def _store(engine, requester: str, request_id, shown: list, hidden: list) -> tuple[int, int]:
    """Store one release; (the largest row id before it, after it)."""
    period = current_period(engine)
    with engine.begin() as conn:
        before = int(conn.execute(select(func.coalesce(func.max(T.c.id), 0))).scalar_one())
        release = int(conn.execute(select(func.coalesce(func.max(T.c.release), 0))).scalar_one()) + 1
        rows = [dict(period=period, release=release, requester=requester[:255],
                     request_id=None if request_id is None else str(request_id)[:64], hidden=is_hidden,
                     n=int(len(ids)), person_ids=state.pack_ids(ids), released_at=state.utcnow())
                for is_hidden, sets in ((False, shown), (True, hidden)) for ids in sets if len(ids) or is_hidden]
        if rows:
            conn.execute(insert(T), rows)
        after = int(conn.execute(select(func.coalesce(func.max(T.c.id), 0))).scalar_one())
    return before, after


def _stored(engine, min_cell: int, auditor: ReleaseAuditor, ids: tuple[int, int]) -> None:
    """The cached auditor holds the rows up to ``ids[1]`` if it held every row before ``ids[0]``
    (else another process wrote in between: the next audit reads those rows, and re-reads this
    release, which adds nothing to the span)."""
    key = (str(engine.url), min_cell)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] is auditor and cached[2] == ids[0]:
            _cache[key] = (auditor, cached[1], ids[1])


def check_and_record(engine, min_cell: int, requester: str, request_id, shown: list, hidden: list) -> None:
    """Refuse ``DIFFERENCING`` (or ``AUDIT_FULL``) a release that, with everything released at this
    site before, determines a group of 1..min_cell-1 persons or a suppressed cell; else record it.
    Call under :data:`node.state.release_lock`."""
    auditor = _auditor(engine, min_cell)
    verdict = auditor.check_and_commit(shown, hidden)  # AUDIT_FULL raises Refusal itself
    if not verdict.safe:
        what = []
        if verdict.small_atoms:
            what.append(f"the values of a group of fewer than {min_cell} persons")
        if verdict.hidden_cells:
            what.append("a suppressed cell")
        raise Refusal("DIFFERENCING", "together with results this site has already released (to anyone), this "
                                      f"result would determine {' and '.join(what)}")
    _stored(engine, min_cell, auditor, _store(engine, requester, request_id, shown, hidden))


def release_what_is_safe(engine, min_cell: int, requester: str, request_id, candidates: list) -> list[bool]:
    """For results made of many nested counts (a quantile round's n_le): audit the candidate sets one
    by one, in order, and release those that pass (True) -- the others are suppressed instead of the
    whole result being refused.  Call under :data:`node.state.release_lock`."""
    auditor = _auditor(engine, min_cell)
    kept, verdicts = [], []
    for ids in candidates:
        try:
            safe = auditor.check_and_commit([ids]).safe
        except Refusal:
            safe = False
        verdicts.append(safe)
        if safe:
            kept.append(ids)
    if kept:
        _stored(engine, min_cell, auditor, _store(engine, requester, request_id, kept, []))
    return verdicts


def record_hidden(engine, min_cell: int, requester: str, request_id, hidden: list) -> None:
    """A cohort refused as "< k": its count must stay undetermined by later releases.  An empty one
    is recorded too (a zero vector, which the auditor keeps out of its span): a refusal of nobody
    must do the same work as a refusal of a few, or its time would tell them apart."""
    hidden = [np.asarray(h, dtype=np.int64) for h in hidden if len(h) < min_cell]
    if not hidden:
        return
    auditor = _auditor(engine, min_cell)
    auditor.commit([], hidden)
    _stored(engine, min_cell, auditor, _store(engine, requester, request_id, [], hidden))
