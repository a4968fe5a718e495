"""Several ingest runs loading one PostgreSQL CDM at the same time (on one machine or several).

Each run loads its own files; its batches commit as they go, next to the other runs' batches
(:mod:`node.ingest.load` makes each batch safe against theirs).  What a run decides at its end
depends on the others, though: a resource whose Patient is in another run's files can be mapped
only once that Patient is in the CDM, a reference can be filled only once its target is, and an
observation period or a ctDNA draw spans rows several runs wrote.  So a run's life has two phases,
kept apart by two session advisory locks (:mod:`cdm.locks`) on a connection of its own:

1. **loading** — the run holds :data:`LOADING` *shared*: any number of runs load together.
2. **finishing** — the run gives :data:`LOADING` back.  If anything still waits (a resource without
   its patient, a reference without its target) it first takes :data:`LOADING` *exclusively* for
   an instant: that waits until every run loading at that moment has written all its batches, so
   whatever those runs bring is in the CDM.  Then it holds :data:`FINISHING` exclusively while it
   maps the waiting resources again, fills the references whose target arrived (from any run), and
   recomputes observation periods: finishing runs go one at a time, and of two runs that wrote rows
   of one person, the one finishing last sees both runs' rows.
3. **settling** — a run that still has references waiting at its end (targets in no file, or in
   the files of a run still finishing) takes :data:`RUNNING`, which every run holds shared for its
   whole life, exclusively for an instant: that waits until every run running alongside has ended.
   Then it fills what they brought and reports only what is still waiting, as one run would.

A run that dies (an error, a kill, a lost connection) frees its locks with its connection: nobody
waits for it.  A run starting while another waits for the loaders starts once that wait is over
(PostgreSQL queues the shared request behind the waiting exclusive one).  On SQLite a lease is
inert: one run at a time is what SQLite supports.

A wait for other runs is not silent: every :data:`~cdm.locks.REPORT_EVERY` seconds the run is told
which runs it waits for (each run's lease connection names its host and process in
``application_name``, :func:`run_name`).  With a ``timeout`` a run stops waiting for the *loading*
and *running* runs after that many seconds and finishes with what the CDM holds then: resources
still without their patient are quarantined as ``UNKNOWN_PATIENT`` and references stay pending, as
if the other runs' files had not been given (the exit status says so; running the same command
once they have ended loads the rest).  The wait for a *finishing* run is never given up: finishing
is short, and two runs must not recompute one person's observation periods at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, func, select

from cdm.locks import Holder, hold, release

#: Held shared by every run while it loads (see the module's docstring).
LOADING = "fhir ingest: loading"
#: Held by the one run that is finishing.
FINISHING = "fhir ingest: finishing"
#: Held shared by every run from its start to its end.
RUNNING = "fhir ingest: running"


#: What a waiting run is told: (what it waits for, the sessions holding it, seconds waited so far).
Notice = Callable[[str, list[Holder], float], None]


def run_name() -> str:
    """How a run names itself to the others (``application_name``, at most 63 bytes)."""
    return f"radfed ingest fhir on {socket.gethostname()} pid {os.getpid()}"[:63]


class RunLease:
    """One ingest run's place among the runs loading the same CDM.

    ``waiting``: told while the run waits for others (see the module's docstring); ``timeout``:
    seconds after which it stops waiting for loading and running runs (``None``: never).
    """

    def __init__(self, engine: Engine, waiting: Notice | None = None, timeout: float | None = None):
        self._conn = None
        self._waiting = waiting
        self.timeout = timeout
        #: what this run stopped waiting for after ``timeout`` seconds (the loaders, the runners)
        self.gave_up: list[str] = []
        if engine.dialect.name == "postgresql":
            # Session locks outlive transactions; in autocommit the connection never sits idle inside
            # one while the run loads (which would hold back VACUUM for hours).
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn.execute(select(func.set_config("application_name", run_name(), False)))
            hold(self._conn, RUNNING, shared=True)
            hold(self._conn, LOADING, shared=True)
        self._loading = self._running = self._conn is not None

    def _notice(self, what: str):
        """What :func:`~cdm.locks.hold` tells while it waits for ``what`` (``None``: nobody listens)."""
        if self._waiting is None:
            return None
        return lambda holders, waited: self._waiting(what, holders, waited)

    def _wait_for(self, name: str, what: str) -> None:
        """Take ``name`` exclusively and give it back at once: every run holding it now is past it
        (unless :attr:`timeout` seconds pass first)."""
        if hold(self._conn, name, waiting=self._notice(what), timeout=self.timeout):
            release(self._conn, name)
        else:
            self.gave_up.append(what)

    def loaded(self, wait: bool) -> None:
        """This run has written all its batches; with ``wait``, return only once every run loading
        now has too (or ``timeout`` seconds have passed)."""
        if self._conn is None or not self._loading:
            return
        release(self._conn, LOADING, shared=True)
        self._loading = False
        if wait:
            self._wait_for(LOADING, "runs loading this CDM")

    def settle(self) -> None:
        """Return once every run running now (this one aside) has ended (or ``timeout`` seconds have
        passed)."""
        if self._conn is None or not self._running:
            return
        release(self._conn, RUNNING, shared=True)
        self._running = False
        self._wait_for(RUNNING, "runs still running on this CDM")

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """The run's last steps, one finishing run at a time."""
        if self._conn is None:
            yield
            return
        hold(self._conn, FINISHING, waiting=self._notice("a run finishing on this CDM"))
        try:
            yield
        finally:
            release(self._conn, FINISHING)

    def close(self) -> None:
        """Free every lock this run holds (its connection ends)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
