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

import hashlib
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
#: Times a transaction that lost a race is run again before the error is raised.
RETRIES = 8
#: SQLSTATEs of a transaction that lost a race with another one (PostgreSQL docs, Appendix A):
#: unique_violation, serialization_failure, deadlock_detected.
CONFLICT_STATES = frozenset({"23505", "40001", "40P01"})


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


def hold(conn: Connection, name: str, shared: bool = False) -> None:
    """Take the session lock ``name`` on ``conn`` (shared: any number of holders, none exclusive),
    waiting until it is free."""
    if _on_postgresql(conn):
        lock = func.pg_advisory_lock_shared if shared else func.pg_advisory_lock
        conn.execute(select(lock(lock_key(name))))


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
