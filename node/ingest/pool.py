"""The worker processes of a FHIR ingest run: units of input out, records back, in input order.

Units (a block of whole NDJSON lines or of a big Bundle's entries, about :data:`BLOCK` bytes, or
one small Bundle file) go to a ``concurrent.futures.ProcessPoolExecutor`` of ``forkserver``
processes (a fresh interpreter per worker, forked from a server that imported the ingest modules
once: no database socket or thread of the loading process is ever inherited).  At most :data:`AHEAD` units per worker are out at
once, so memory does not grow with the input: the loading process holds those units' blocks and
the records of the one it is writing, whatever the size of the export.

Units and records travel through files in a run-private folder (in ``/dev/shm`` where there is
one); the executor's pipes carry only their names.  A message of a pipe is then always far below
``PIPE_BUF`` and written whole: a worker killed while it sends megabytes of records would leave the
executor's thread waiting forever for the rest of a message (CPython's ProcessPoolExecutor).

A worker that dies (killed, out of memory, a crash in an extension module) breaks the pool: the
unit it held, and every unit after it, is never written; :class:`WorkerCrashed` says which unit
that was.  Everything before it is written (the caller writes what it has taken, then raises), so
running the same command again loads exactly what is missing: unchanged resources are skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from cdm.errors import RadfedError
from node.ingest import worker

#: Bytes of NDJSON per unit (a few thousand resources: enough to amortise the hand-over).
BLOCK = 1 << 21
#: Units in flight per worker: one being mapped, one waiting, one done and not yet written.
AHEAD = 3


class WorkerCrashed(RadfedError):
    """A worker process ended abruptly; what it held was not written (run the command again)."""


class Unit:
    """One unit of input in the order of the run: its task, where it came from, when it was handed out."""

    __slots__ = ("task", "source_file", "block", "handed_out", "future", "where")

    def __init__(self, task: tuple | None, handed_out: int, future: Future, where: str, source_file: str = "",
                 block: bytes | None = None):
        self.task = task  # None: already done here (a marker, an item of the reader's own)
        self.source_file = task[1] if task else source_file
        self.block = block
        self.handed_out = handed_out
        self.future = future
        self.where = where


class WorkerPool:
    """``workers`` mapping processes over one CDM; :meth:`submit` units, :meth:`done` takes them back
    in order once at most ``AHEAD * workers`` are out (:meth:`drain`: all of them)."""

    def __init__(self, url: str, workers: int, mrn_system: str, cache_size: int, force: bool):
        context = multiprocessing.get_context("forkserver")
        # the server imports the ingest modules once; each worker is forked from it
        context.set_forkserver_preload(["node.ingest.worker"])
        self.workers = workers
        self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=worker.start,
                                             initargs=(url, mrn_system, cache_size, force))
        self._out: deque[Unit] = deque()
        shm = "/dev/shm"
        self._folder = tempfile.mkdtemp(prefix="radfed-ingest-", dir=shm if os.access(shm, os.W_OK) else None)
        self._units = 0
        #: CPU seconds the workers spent on the units taken back (what a core count must cover)
        self.cpu_seconds = 0.0
        self.peak_rss_mb = 0.0  # the largest of the workers'

    def submit(self, kind: str, path: str, type_hint: str | None, first: int, block: bytes | None,
               handed_out: int, where: str) -> None:
        """Hand out a unit: an NDJSON ``block`` whose first line is number ``first``, a ``block`` of a big
        Bundle's entries (kind ``entries``: each line carries its entry number), or a Bundle file."""
        self._units += 1
        name = os.path.join(self._folder, str(self._units))
        if block is not None:
            with open(name + ".in", "wb") as handle:
                handle.write(block)
        task = (kind, path, type_hint, first, name)
        try:
            future = self._executor.submit(worker.map_unit, task)
        except BrokenProcessPool as exc:
            # a worker died since the last unit came back: the oldest unit out is the first lost
            raise self._crashed(next((u.where for u in self._out if u.task is not None), where), exc) from None
        self._out.append(Unit(task, handed_out, future, where, block=block))

    def submit_records(self, source_file: str, records: list, handed_out: int) -> None:
        """Records made in this process (a damaged gzip stream's last item, a big Bundle's entries
        without a resource), in their place in the order."""
        self._out.append(Unit(None, handed_out, _ready(records), source_file, source_file))

    def mark(self) -> None:
        """A marker in the order: the file before it ended (the caller flushes its batch there)."""
        self._out.append(Unit(None, 0, _ready(None), "", ""))

    def done(self) -> Iterator[tuple[Unit, list]]:
        """The units back from the workers, oldest first, while more than the bound are out."""
        while len(self._out) > AHEAD * self.workers:
            yield self._next()

    def drain(self) -> Iterator[tuple[Unit, list]]:
        while self._out:
            yield self._next()

    @property
    def oldest_handed_out(self) -> int | None:
        return self._out[0].handed_out if self._out else None

    def _next(self) -> tuple[Unit, list]:
        unit = self._out.popleft()
        try:
            if unit.task is None:
                return unit, unit.future.result()
            seconds, peak = unit.future.result()
        except BrokenProcessPool as exc:
            raise self._crashed(unit.where, exc) from None
        name = unit.task[4]
        with open(name + ".out", "rb") as handle:
            records = pickle.load(handle)
        os.unlink(name + ".out")
        self.cpu_seconds += seconds
        self.peak_rss_mb = max(self.peak_rss_mb, peak)
        return unit, records

    def _crashed(self, where: str, exc: Exception) -> WorkerCrashed:
        self._out.clear()
        return WorkerCrashed(
            f"a worker process ended abruptly (killed, out of memory or crashed); the run stopped at {where}: "
            f"nothing from there on was written; everything before it was. Run the same command again: "
            f"unchanged resources are skipped and the rest is loaded ({exc})")

    def close(self) -> None:
        """Stop the workers; after an error, units not started are dropped and the ones being mapped
        let finish (a worker killed while it sends its result leaves the executor waiting for the rest)."""
        self._out.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._folder, ignore_errors=True)


def _ready(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
