"""Named PostgreSQL advisory locks: what lets several processes write one CDM at the same time.

An advisory lock is a lock on a 64-bit number that means whatever the application says it means
(PostgreSQL docs, "Explicit Locking", section "Advisory Locks"); radfed derives the number from a
name (:func:`lock_key`).  Two kinds are used:

- **transaction locks** (:func:`xact_lock`, ``pg_advisory_xact_lock``): held until the transaction
  that took them ends, so a select-then-insert inside it (a site-local concept, the first claim of
  an identifier) is atomic against every other process that takes the same lock;
- **session locks** (:func:`hold` / :func:`release`, ``pg_advisory_lock[_shared]``): held by one
  connection until released or until the connection ends (a crashed process frees its locks).

Each transaction takes its locks at once in key order, so two transactions never wait for each
other's advisory locks in opposite orders.  On SQLite every function is a no-op: SQLite lets one
writer in at a time, and radfed runs concurrent writers of one CDM on PostgreSQL only.

A batch that collides with another process's batch all the same (a row both insert: a unique
violation; row locks taken in opposite orders: a deadlock PostgreSQL broke by aborting it) is
rolled back whole; :func:`conflicted` tells those errors from real failures, so the writer can
redo the batch against what the CDM holds then.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, TableClause, column, func, select, table
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
#: Times a transaction that lost a race is run again before the error is raised.
RETRIES = 8
#: SQLSTATEs of a transaction that lost a race with another one (PostgreSQL docs, Appendix A):
#: unique_violation, serialization_failure, deadlock_detected.
CONFLICT_STATES = frozenset({"23505", "40001", "40P01"})
#: SQLSTATE lock_not_available: a lock wait ended by ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
#: Seconds between two reports of a session lock wait (:func:`hold`'s ``waiting``).
REPORT_EVERY = 30.0


def lock_key(name: str) -> int:
    """The advisory lock number of ``name``: a signed 64-bit integer (the ``bigint`` the functions take)."""
    return int.from_bytes(hashlib.blake2b(f"radfed lock\x1f{name}".encode(), digest_size=8).digest(), "big",
                          signed=True)


def _on_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def xact_lock(conn: Connection, *names: str) -> None:
    """Take the transaction locks ``names`` (in key order) in ``conn``'s transaction, waiting for them."""
    if not names or not _on_postgresql(conn):
        return
    for key in sorted({lock_key(n) for n in names}):
        conn.execute(select(func.pg_advisory_xact_lock(key)))


def hold(conn: Connection, name: str, shared: bool = False, *,
         waiting: Callable[[list[Holder], float], None] | None = None, timeout: float | None = None) -> bool:
    """Take the session lock ``name`` on ``conn`` (shared: any number of holders, none exclusive),
    waiting until it is free; returns whether it was taken.

    With ``waiting``, a lock that is not free at once is waited for in steps of at most
    :data:`REPORT_EVERY` seconds (``lock_timeout``, which ends a lock wait with SQLSTATE 55P03;
    PostgreSQL docs, "Client Connection Defaults"), and ``waiting(holders, seconds waited)`` is told
    who holds it before each step, so a person watching knows what the process waits for.  With
    ``timeout``, it gives up after that many seconds and returns ``False`` (the lock not taken).
    ``conn`` must be in autocommit then (a lock timeout inside a transaction would abort it).
    Between two steps the request leaves PostgreSQL's queue for a moment: a shared request arriving
    then may get in first (one step later, this one is back in the queue).
    """
    if not _on_postgresql(conn):
        return True
    key = lock_key(name)
    if waiting is None and timeout is None:
        lock = func.pg_advisory_lock_shared if shared else func.pg_advisory_lock
        conn.execute(select(lock(key)))
        return True
    try_lock = func.pg_try_advisory_lock_shared if shared else func.pg_try_advisory_lock
    if conn.execute(select(try_lock(key))).scalar_one():
        return True
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            return False
        if waiting is not None:
            waiting(holders(conn, name), waited)
        step = REPORT_EVERY if timeout is None else min(REPORT_EVERY, timeout - waited)
        if _lock_within(conn, key, shared, step):
            return True


def _lock_within(conn: Connection, key: int, shared: bool, seconds: float) -> bool:
    """Wait at most ``seconds`` for the advisory lock ``key``; whether it was taken."""
    lock = func.pg_advisory_lock_shared if shared else func.pg_advisory_lock
    before = conn.execute(select(func.current_setting("lock_timeout"))).scalar_one()
    conn.execute(select(func.set_config("lock_timeout", f"{max(1, int(seconds * 1000))}ms", False)))
    try:
        conn.execute(select(lock(key)))
        return True
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        return False
    finally:
        conn.execute(select(func.set_config("lock_timeout", before, False)))


@dataclass(frozen=True)
class Holder:
    """A PostgreSQL session holding a lock: its backend pid, ``application_name`` (radfed's ingest
    runs name their host and process there), client address and when it connected."""

    pid: int
    application: str
    client: str | None
    since: dt.datetime | None

    def describe(self) -> str:
        who = self.application or "a session"
        where = f" from {self.client}" if self.client else ""
        since = f", connected {self.since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if self.since else ""
        return f"{who} (PostgreSQL pid {self.pid}{where}{since})"


def holders(conn: Connection, name: str) -> list[Holder]:
    """The other sessions holding the session lock ``name`` now (``pg_locks``: a bigint advisory key
    is ``classid`` = its high 32 bits, ``objid`` = its low 32 bits, ``objsubid`` = 1)."""
    if not _on_postgresql(conn):
        return []
    key = lock_key(name)
    locks, activity = _catalog()
    query = (select(locks.c.pid, activity.c.application_name, activity.c.client_addr, activity.c.backend_start)
             .join_from(locks, activity, activity.c.pid == locks.c.pid)
             .where(locks.c.locktype == "advisory", locks.c.granted,
                    locks.c.classid == (key >> 32) & 0xFFFFFFFF, locks.c.objid == key & 0xFFFFFFFF,
                    locks.c.objsubid == 1, locks.c.pid != func.pg_backend_pid())
             .distinct().order_by(locks.c.pid))
    return [Holder(pid, application or "", str(client) if client is not None else None, since)
            for pid, application, client, since in conn.execute(query)]


def _catalog() -> tuple[TableClause, TableClause]:
    """``pg_locks`` and ``pg_stat_activity``, the columns :func:`holders` reads."""
    locks = table("pg_locks", column("locktype"), column("granted"), column("classid"), column("objid"),
                  column("objsubid"), column("pid"))
    activity = table("pg_stat_activity", column("pid"), column("application_name"), column("client_addr"),
                     column("backend_start"))
    return locks, activity


def release(conn: Connection, name: str, shared: bool = False) -> None:
    """Give back a session lock taken with :func:`hold`."""
    if _on_postgresql(conn):
        unlock = func.pg_advisory_unlock_shared if shared else func.pg_advisory_unlock
        conn.execute(select(unlock(lock_key(name))))


def conflicted(exc: BaseException) -> bool:
    """True for a database error that says the transaction lost a race (see :data:`CONFLICT_STATES`):
    SQLAlchemy's wrapped error, or psycopg's own from a ``COPY`` on the driver's cursor."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(error, "sqlstate", None) in CONFLICT_STATES


def retry_conflicts(transaction: Callable[[], T], before_retry: Callable[[], None] | None = None,
                    retries: int = RETRIES) -> T:
    """``transaction()`` (which opens and commits its own transaction), run again while it loses a
    race (:func:`conflicted`), after ``before_retry()`` and a short random pause (two deadlock
    victims do not meet again at once)."""
    for attempt in range(retries + 1):
        try:
            return transaction()
        except Exception as exc:  # noqa: BLE001 - a COPY raises the driver's own error, not DBAPIError
            if attempt == retries or not conflicted(exc):
                raise
            if before_retry is not None:
                before_retry()
            time.sleep(random.uniform(0, 0.01 * 2 ** attempt))
    raise AssertionError("unreachable")
