"""The FHIR R4 ingest run: read, hash, validate, map, write — in batches, nothing dropped.

For each batch of resources read (:mod:`node.ingest.reader`, already in dependency order):

1. the content hash of each resource (BLAKE2b of its canonical JSON, keys sorted) is compared with
   the one ``source_record`` holds for its key ``fhir|Type|id`` — one query per batch; an equal
   hash means **unchanged** and the resource is not even validated again (a resource that mapped to
   no row has its hash there too: :data:`~node.ingest.load.NO_ROW`);
2. the others are validated against the R4B models (:mod:`node.ingest.validate`) and mapped by
   the mapper registered for their type (:mod:`node.ingest.contract`); a failure of either is
   **quarantined** with file, line and reason;
3. the batch's rows are written in one transaction (:mod:`node.ingest.load`): an **updated**
   resource's previous rows are replaced, a new one's inserted.

With ``workers`` (the default for inputs over 4 MB: one per core but one), steps 1-2 run in worker
processes (:mod:`node.ingest.pool`, :mod:`node.ingest.worker`) on blocks of NDJSON lines, on small
Bundle files and on blocks of a big Bundle's entries (streamed here), and this process takes their records in input order and only writes; what a worker
asked of the run is asked again here, so the result is the same as without workers.

A resource whose patient is not loaded yet waits (in a temporary file) and is mapped again after
the last file — and after every other run loading the same PostgreSQL CDM at the same time has
loaded its files (:mod:`node.ingest.concurrency`); only then is it quarantined as
``UNKNOWN_PATIENT``.  Then references whose target arrived are filled and the observation periods
of every person touched are recomputed (:mod:`node.ingest.periods`).  Which mapper maps which resource
type is the table :data:`node.ingest.mappers.MAPPERS`.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import Engine

from cdm.db import refresh_statistics
from cdm.locks import retry_conflicts
from node.fhir_profile import DEFAULT_MRN_SYSTEM
from node.ingest import deferred_indexes, periods
from node.ingest.concurrency import Notice, RunLease
from node.ingest.context import UNKNOWN_PATIENT, RunContext, source_key
from node.ingest.contract import Row, Unmappable
from node.ingest.load import BatchWriter, Mapped, Rejected, existing_hashes, pending_references, rows_problem
from node.ingest.mappers import AFTER_LOAD, MAPPERS
from node.ingest.mapping import (  # noqa: F401 - content_hash, NO_CDM_TABLE: re-exported for callers
    MAPPING_ERROR, NO_CDM_TABLE, Provided, content_hash, failure_reason, identifiers_of, learn, remember,
)
from node.ingest.pool import BLOCK, WorkerCrashed, WorkerPool
from node.ingest.reader import InputFile, Item, Progress, bundle_blocks, discover, ndjson_blocks, read, streams
from node.ingest.summary import IngestSummary
from node.ingest.validate import problem, relaxed_gc
from node.ingest.worker import (
    ERROR, INVALID, MAPPED, PERSON, REDO, REFERENCE, UNCHANGED, Premapped, Record, error_record, replay, worker_url,
)

BATCH = 5_000
#: Inputs smaller than this are loaded without worker processes (see :func:`auto_workers`).
POOL_MIN_BYTES = 4 << 20
#: Referenceable resources the run remembers per cache generation (two generations are kept).
CACHE_SIZE = 100_000


@dataclass
class _Batch:
    """A batch read and hashed in this process (no workers, or the resources retried at the end)."""

    items: list[Item]
    keys: list[str | None]
    digests: list[str]
    known: dict[str, str]  # source_key -> content hash in the CDM when the batch was read


class _Unread:
    """Where a worker's record was read; the :class:`Item` of its bytes (sliced out of the unit's block)
    is made only when the loader quarantines, defers or maps the resource itself (:meth:`item`).  Most
    records need none, and an Item for every one cost ~2% of the loader's instructions."""

    __slots__ = ("source_file", "line", "_block", "_raw", "_type_hint", "_item")

    def __init__(self, source_file: str, line: int, block: bytes | None, raw, type_hint: str | None):
        self.source_file, self.line, self._block, self._raw, self._type_hint = source_file, line, block, raw, type_hint
        self._item: Item | None = None

    def item(self) -> Item:
        if self._item is None:
            raw = self._raw
            self._item = Item(self.source_file, self.line,
                              raw if raw is None or isinstance(raw, bytes) else self._block[raw[0]:raw[1]],
                              type_hint=self._type_hint)
        return self._item


class _ExpectedRows(dict):
    """The row ids, by table, a unit's replay may ask the CDM about: those its worker found for the
    persons and references its mappers asked.  Gathered from the records when the context first
    looks (``get``: a row its caches do not hold, :meth:`~node.ingest.context.RunContext.expect`);
    in a run its caches cover it never does, and going through every question of every record cost
    ~2% of the loader.  Only a hint: a context that did not look would ask row by row."""

    def __init__(self, records: list[Record]):
        super().__init__()
        self._records: list[Record] | None = records

    def get(self, table: str, default=None):
        if self._records is not None:
            records, self._records = self._records, None
            for record in records:
                if record[6] == MAPPED and record[7] is not None:
                    for call in record[7].calls:
                        if (call[0] == PERSON or call[0] == REFERENCE) and type(call[-1]) is int:
                            self.setdefault("person" if call[0] == PERSON else call[2], set()).add(call[-1])
        return super().get(table, default)


def _read(item: Item | _Unread) -> Item:
    """The :class:`Item` itself (read in this process) or of a worker's record."""
    return item.item() if isinstance(item, _Unread) else item


class IngestRun:
    """One run over any number of files; feed items with :meth:`add` (read here) or :meth:`take` (a
    worker's records), then :meth:`finish`.

    Either way resources are judged, mapped (or their worker's mapping checked) and written in input
    order, in batches that end at the same resources, so ids, references, quarantine and counts do not
    depend on ``workers``.  ``force`` re-maps resources whose content is unchanged (after a vocabulary
    load).  ``waiting`` and ``wait_timeout``: see :class:`~node.ingest.concurrency.RunLease`.
    """

    def __init__(self, engine: Engine, mrn_system: str = DEFAULT_MRN_SYSTEM, batch_size: int = BATCH,
                 force: bool = False, cache_size: int = CACHE_SIZE, waiting: Notice | None = None,
                 wait_timeout: float | None = None):
        self.engine = engine
        # A generation must outlast the two batches in flight, whose rows are not in the CDM yet.
        self.cache_size = max(cache_size, 3 * batch_size)
        self.ctx = RunContext(engine, mrn_system, self.cache_size)
        self.writer = BatchWriter(engine)
        self.lease = RunLease(engine, waiting, wait_timeout)  # among the runs loading this CDM now
        self.batch_size = batch_size
        self.force = force
        self.summary = IngestSummary()
        self.persons: set[int] = set()
        self._pending: list[Item] = []
        self._rejected: list[Rejected] = []
        self._inflight: _Batch | None = None
        self._written_keys: set[str] = set()
        # Resources whose patient is not loaded yet wait here (on disk: they may be many) until the end
        # of the run, so a reference to a patient in a later file still resolves.
        self._deferred = None
        self._retrying = False
        self._started = time.perf_counter()
        # Records mapped by worker processes (take()) gather here until a batch is full.
        self._mapped: list[Mapped] = []
        self._in_batch: set[str] = set()
        self._taken = 0  # records taken into this batch
        #: batches written so far; and, for the batches written since the oldest unit still in a
        #: worker was handed out, which keys each wrote (take() corrects those units' stored hashes)
        self.writes = 0
        self._window: deque[tuple[int, set[str]]] = deque()
        self._written_at: dict[str, int] = {}
        #: resources a worker mapped that this process mapped again (a different answer: see replay)
        self.remapped = 0
        #: the person tables' secondary indexes were dropped for this load (node.ingest.deferred_indexes)
        self.indexes_set_aside = False
        self._asked: set = set()  # questions of the workers' mappers replayed with the same answer

    # -- input ---------------------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        if item.error is not None:
            self._reject(item, *item.error)
        else:
            self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._advance()

    def _reject(self, item: Item, reason_code: str, reason: str) -> None:
        resource = self._resource(item) if item.error is None else {}
        resource_type = resource.get("resourceType") or item.type_hint
        resource_id = resource.get("id")
        payload = item.raw if item.raw is not None else orjson.dumps(resource)
        where = f"{item.source_file}:{item.line}" if item.line else item.source_file
        self._rejected.append(Rejected(reason_code, f"{where}: {reason}", item.source_file, item.line,
                                       str(resource_type)[:64] if resource_type else None,
                                       str(resource_id)[:255] if resource_id else None, payload))
        self.summary.count(resource_type if isinstance(resource_type, str) else None, "quarantined", reason_code)

    def _defer(self, item: Item) -> None:
        if self._deferred is None:
            self._deferred = tempfile.TemporaryFile()
        raw = item.raw if item.raw is not None else orjson.dumps(item.resource)
        self._deferred.write(orjson.dumps([item.source_file, item.line, raw.decode("utf-8")]) + b"\n")

    # -- batches -------------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Start validating the queued items, then map and write the batch before them."""
        pending, self._pending = self._pending, []
        batch = self._prepare(pending) if pending else None
        if self._inflight is not None:
            self._complete(self._inflight)
        self._inflight = batch

    def flush(self) -> None:
        """Map and write everything queued (the pipeline is drained)."""
        self._flush_mapped()
        self._advance()
        if self._inflight is not None:
            batch, self._inflight = self._inflight, None
            self._complete(batch)
        self._write([])

    def _prepare(self, items: list[Item]) -> _Batch:
        keys, digests = [], []
        for item in items:
            resource = item.resource
            rid = resource.get("id")
            keys.append(source_key(resource["resourceType"], rid) if isinstance(rid, str) and rid else None)
            digests.append(content_hash(resource))
        known = existing_hashes(self.engine, [k for k in keys if k])
        return _Batch(items, keys, digests, known)

    def _complete(self, batch: _Batch) -> None:
        known = batch.known
        # The batch before this one was written after this one's hashes were read: a resource present
        # in both (a duplicate in the export) must be judged against what that batch wrote.
        stale = [k for k in batch.keys if k in self._written_keys]
        if stale:
            known = self._reread(known, stale)
        mapped: list[Mapped] = []
        in_batch: set[str] = set()
        for item, key, digest in zip(batch.items, batch.keys, batch.digests):
            if key in in_batch:
                # The same resource twice in one batch: write what precedes it, so this copy is judged
                # (unchanged / updated) against the one before it and the copy read last wins.
                self._write(mapped)
                mapped, in_batch = [], set()
                known = self._reread(known, [key])
            unchanged = not self.force and key in known and known[key] == digest
            if unchanged or item.validated or item.resource["resourceType"] in NO_CDM_TABLE:
                found = None
            else:
                found = problem(item.resource)
            outcome = self._map(item, key, digest, unchanged, key in known, found)
            if outcome is not None:
                mapped.append(outcome)
                in_batch.add(key)
        self._write(mapped)
        self._written_keys = {k for k in batch.keys if k}

    def _reread(self, known: dict[str, str], keys: list[str]) -> dict[str, str]:
        """``known`` with the content hashes of ``keys`` as the CDM holds them now (absent: not loaded)."""
        reread = set(keys)
        return {**{k: v for k, v in known.items() if k not in reread}, **existing_hashes(self.engine, keys)}

    def _write(self, mapped: list[Mapped]) -> None:
        rejected, self._rejected = self._rejected, []
        if mapped or rejected:
            self.persons |= self.writer.write(mapped, rejected)
            self.writes += 1
            if mapped and self._tracking:
                keys = {m.key for m in mapped}
                self._window.append((self.writes, keys))
                self._written_at.update(dict.fromkeys(keys, self.writes))

    # -- records mapped by worker processes ----------------------------------------------------------

    #: take() needs to know which keys recent batches wrote (set while workers map)
    _tracking = False

    def forget_writes(self, through: int) -> None:
        """Stop remembering the keys of batches up to ``through`` (no unit handed out before them is
        still to be taken)."""
        while self._window and self._window[0][0] <= through:
            seq, keys = self._window.popleft()
            for key in keys:
                if self._written_at.get(key) == seq:
                    del self._written_at[key]

    def take(self, source_file: str, block: bytes | None, handed_out: int, records: list[Record]) -> None:
        """Write what a worker made of one unit of input, in order (see :mod:`node.ingest.worker`).

        ``handed_out``: :attr:`writes` when the unit went to the worker; a resource a later batch
        wrote is judged against the CDM as it is now, not as the worker saw it.
        """
        self._expect(records)
        for line, raw, resource_type, resource_id, digest, stored, verdict, payload in records:
            item = _Unread(source_file, line, block, raw, resource_type)
            if verdict == ERROR:
                item = item.item()
                item.error, item.type_hint = payload[:2], payload[2]
                self._reject(item, *payload[:2])
                continue
            key = source_key(resource_type, resource_id) if resource_id else None
            if key is not None and key in self._in_batch:
                # the same resource twice: write what precedes it, so this copy is judged against it
                mapped, self._mapped, self._in_batch = self._mapped, [], set()
                self._write(mapped)
            if key is not None and self._written_at.get(key, 0) > handed_out:
                stored = existing_hashes(self.engine, [key]).get(key)
            unchanged = not self.force and stored is not None and stored == digest
            premapped = None
            found = None
            if verdict == INVALID:
                found = payload
            elif verdict == MAPPED and not unchanged:
                premapped = payload
            elif verdict in (UNCHANGED, REDO) and not unchanged and resource_type not in NO_CDM_TABLE:
                # the worker could not map it (or judged it unchanged before this run rewrote it)
                found = problem(self._resource(item.item()))
            outcome = self._map(item, key, digest, unchanged, stored is not None, found, premapped,
                                (resource_type, resource_id))
            if outcome is not None:
                self._mapped.append(outcome)
                self._in_batch.add(key)
            # batches end where the in-process path's end (every batch_size resources read): rows
            # two resources write (a ctDNA draw) merge differently within a batch and across two
            self._taken += 1
            if self._taken >= self.batch_size:
                self._flush_mapped()

    def _expect(self, records: list[Record]) -> None:
        """Tell the context which rows the unit's replay will ask about: those the worker found
        (:meth:`~node.ingest.context.RunContext.expect`), gathered only if it looks (:class:`_ExpectedRows`)."""
        self.ctx.expect(_ExpectedRows(records))

    def _flush_mapped(self) -> None:
        mapped, self._mapped, self._in_batch, self._taken = self._mapped, [], set(), 0
        self._write(mapped)

    @staticmethod
    def _resource(item: Item) -> dict:
        """The parsed resource of an item (a worker's record carries only its bytes)."""
        if item.resource is None:
            item.resource = orjson.loads(item.raw) if item.raw else {}
        return item.resource

    def _rows(self, fn, item: Item | _Unread,
              premapped: Premapped | None) -> tuple[list[Row], str | None, Provided | None]:
        """The rows of a resource, why one cannot be written (:func:`row_problem`) and what it
        provides to later references: the worker's when replaying its questions gives its answers
        (``None`` facts: not computed, no rows or a bad one), else mapped and checked here (facts
        ``None``: :func:`remember` them)."""
        if premapped is not None:
            if replay(self.ctx, premapped.calls, self._asked):
                self.ctx.unmapped_codings = premapped.unmapped
                if premapped.raised is not None:
                    raise Unmappable(*premapped.raised)
                return [Row(table, values) for table, values in premapped.rows], premapped.bad, premapped.facts
            self.ctx.unresolved, self.ctx.unmapped_codings = [], 0
            self.remapped += 1
        rows = fn(self._resource(_read(item)), self.ctx)
        return rows, rows_problem(rows), None

    def _map(self, item: Item | _Unread, key: str | None, digest: str, unchanged: bool, replaces: bool,
             found: tuple[str, str] | None, premapped: Premapped | None = None,
             identity: tuple[str, str | None] | None = None) -> Mapped | None:
        """``identity``: (type, id) of an item whose resource is not parsed (a worker's record)."""
        resource_type, resource_id = identity or (item.resource["resourceType"], item.resource.get("id"))
        self.ctx.current_type = resource_type
        if resource_type in NO_CDM_TABLE:
            self.summary.count(resource_type, "skipped", "no CDM table", item.source_file)
            return None
        if unchanged:
            self.ctx.mark_present(resource_type, resource_id)
            self.summary.count(resource_type, "unchanged")
            return None
        if found is not None:
            self._reject(_read(item), *found)
            return None
        fn = MAPPERS.get(resource_type)
        if fn is None:
            self.summary.count(resource_type, "skipped", "no mapper", item.source_file)
            return None
        self.ctx.unresolved, self.ctx.unmapped_codings = [], 0
        try:
            rows, bad, facts = self._rows(fn, item, premapped)
        except Unmappable as exc:
            if exc.code == UNKNOWN_PATIENT and not self._retrying:
                self._defer(_read(item))
            else:
                self._reject(_read(item), exc.code, exc.reason)
            return None
        except Exception as exc:  # noqa: BLE001 - a mapper failing on odd input must not lose the resource
            self._reject(_read(item), MAPPING_ERROR, failure_reason(resource_type, exc))
            return None
        if bad is not None:
            self._reject(_read(item), MAPPING_ERROR, bad)
            return None
        if not rows:
            self.summary.count(resource_type, "skipped", "maps to no CDM row")
            # Written as its hash alone (load.NO_ROW): the next run finds it unchanged.  An update that
            # now maps to nothing (entered-in-error, not-done) also removes the old rows.
            return None if key is None else Mapped(key, digest, [], [], replaces, (item.source_file, item.line))
        if facts is None:
            facts = remember(self.ctx, key, resource_type, resource_id, identifiers_of(self._resource(_read(item))), rows)
        else:
            learn(self.ctx, resource_type, resource_id, facts)
        self.summary.count(resource_type, "updated" if replaces else "loaded")
        if self.ctx.unmapped_codings:
            self.summary.unmapped[resource_type] += self.ctx.unmapped_codings
        return Mapped(key, digest, rows, facts.aliases, replaces, (item.source_file, item.line),
                      pending_references(self.ctx.unresolved, rows) if self.ctx.unresolved else [], facts.provides)

    def _retry_deferred(self) -> None:
        """Map the resources that met no patient once more; those still without one are quarantined."""
        self._retrying = True
        deferred, self._deferred = self._deferred, None
        with deferred:
            deferred.seek(0)
            for line in deferred:
                source_file, number, raw = orjson.loads(line)
                data = raw.encode("utf-8")
                self.add(Item(source_file, number, data, orjson.loads(data), validated=True))
            self.flush()
        self._retrying = False

    def restore_indexes(self) -> None:
        if self.indexes_set_aside:
            deferred_indexes.restore(self.engine)
            self.indexes_set_aside = False

    def close(self) -> None:
        """Let go of what a run that will not be finished holds (an error, an interrupt); the
        indexes set aside are created again (what was written is kept and should be found fast)."""
        self.restore_indexes()
        self.writer.close()
        self.lease.close()
        if self._deferred is not None:
            self._deferred.close()

    def _after_load(self) -> None:
        with self.engine.begin() as conn:
            for step in AFTER_LOAD:
                step(conn, self.persons)

    def finish(self) -> IngestSummary:
        """Write the last batch, retry what waited for its patient, recompute observation periods."""
        self.flush()
        self.restore_indexes()  # observation periods and the after-load steps read by person
        # What still waits may be in the files of runs loading this CDM now: wait until they have loaded.
        self.lease.loaded(wait=self._deferred is not None or self.writer.waiting())
        with self.lease.finishing():
            if self._deferred is not None:
                self._retry_deferred()
            self.writer.resolve_stored()
            self.summary.persons_with_periods = periods.recompute(self.engine, self.persons)
            refresh_statistics(self.engine, self.writer.rows_written)
            if self.persons:  # facts spanning resources loaded apart (a ctDNA variant's Specimen)
                retry_conflicts(self._after_load)  # may meet a batch of a run still loading
            self.summary.remapped = self.remapped
        open_references = self.writer.open_references()
        if open_references:  # some may be another run's, or wait for its targets: let the others end first
            self.lease.settle()
            self.writer.resolve_stored()
            open_references = self.writer.open_references()
        self.summary.references_resolved = self.writer.references_resolved
        self.summary.unresolved_references = open_references
        if self.lease.gave_up:
            self.summary.gave_up_waiting = (self.lease.timeout, self.lease.gave_up)
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary


def auto_workers(total_bytes: int) -> int:
    """Mapping processes for an input of ``total_bytes``: none for small loads (starting a worker and
    building its model classes costs ~1 s), else one per core but the one this process writes on, at
    least one (on 2 cores 1 worker loaded 92,073 resources 1.5x faster than 2: benchmarks/README.md)."""
    if total_bytes < POOL_MIN_BYTES:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def ingest_paths(engine: Engine, paths: Iterable[str | Path], *, mrn_system: str = DEFAULT_MRN_SYSTEM,
                 batch_size: int = BATCH, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None, force: bool = False, cache_size: int = CACHE_SIZE,
                 unit_bytes: int = BLOCK, defer_indexes: bool | None = None, waiting: Notice | None = None,
                 wait_timeout: float | None = None) -> IngestSummary:
    """Load FHIR Bundles / NDJSON files and folders into the CDM; returns what the run did.

    ``progress(bytes_done, bytes_total)`` is called every 1,000 resources and at the end of each file.
    ``workers``: processes that parse, validate and map while this one writes (``None``:
    :func:`auto_workers`; 0: everything in this process).  The result does not depend on it.
    ``force``: re-map resources even when unchanged since the last run (e.g. after a vocabulary load).
    ``cache_size``: referenceable resources remembered per generation (beyond it, references are
    resolved through the CDM; see :class:`~node.ingest.context.RecentCache`).
    ``unit_bytes``: NDJSON bytes a worker takes at a time.
    ``defer_indexes``: drop the person tables' secondary indexes for the load and build them at the
    end (``None``: when a SQLite CDM is expected to at least double; :mod:`node.ingest.deferred_indexes`).
    ``waiting(what, holders, seconds)``: told while the run waits for other runs loading the same
    PostgreSQL CDM; ``wait_timeout``: seconds after which it stops waiting for them
    (:mod:`node.ingest.concurrency`).
    A missing path raises ``FileNotFoundError`` before anything is written; a worker process that
    dies raises :class:`~node.ingest.pool.WorkerCrashed` after what came before it is written.
    """
    files = discover(paths)
    total = sum(f.size for f in files)
    workers = auto_workers(total) if workers is None else workers
    thresholds = relaxed_gc()
    run = IngestRun(engine, mrn_system, batch_size, force, cache_size, waiting, wait_timeout)
    done = Progress()
    try:
        run.indexes_set_aside = deferred_indexes.set_aside(engine, total, defer_indexes)
        if workers > 0:
            _with_workers(run, files, workers, progress, total, done, unit_bytes)
        else:
            _in_process(run, files, progress, total, done)
        return run.finish()
    finally:
        run.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _in_process(run: IngestRun, files: list[InputFile], progress, total: int, done: Progress) -> None:
    last_report = 0
    for input_file in files:
        run.summary.files += 1
        if input_file.kind == "export-metadata":
            run.summary.metadata_files += 1
        for n, item in enumerate(read(input_file, done), 1):
            run.add(item)
            if progress is not None and n % 1000 == 0 and done.done - last_report > 0:
                progress(done.done, total)
                last_report = done.done
        if input_file.kind == "ndjson":
            run.flush()  # the next file's type may reference this one's rows (DiagnosticReport -> Observation)
        if progress is not None:
            progress(done.done, total)


def _with_workers(run: IngestRun, files: list[InputFile], workers: int, progress, total: int,
                  done: Progress, unit_bytes: int) -> None:
    """Hand the files out to ``workers`` processes in units and write their records in input order.

    Before a file of a later load-order rank than the one before (Patients after Practitioners), the
    units out are written first: workers then find what the new file references in the CDM.
    """
    pool = WorkerPool(worker_url(run.engine), workers, run.ctx.mrn_system, run.cache_size, run.force)
    run._tracking = True

    def take(units) -> None:
        for unit, records in units:
            if records is None:  # a marker: the file before it ended
                run.flush()
                continue
            run.take(unit.source_file, unit.block, unit.handed_out, records)
            if progress is not None:
                progress(done.done, total)
        oldest = pool.oldest_handed_out
        run.forget_writes(run.writes if oldest is None else oldest)

    try:
        rank = None
        for input_file in files:
            run.summary.files += 1
            if input_file.kind == "export-metadata":
                run.summary.metadata_files += 1
                done.done += input_file.size
                continue
            if rank is not None and input_file.rank > rank:
                take(pool.drain())
            rank = input_file.rank
            path = str(input_file.path)
            if streams(input_file):
                _stream_bundle(run, pool, input_file, done, unit_bytes, take)
            elif input_file.kind == "bundle":
                done.done += input_file.size
                pool.submit("bundle", path, None, 0, None, run.writes, path)
            else:
                for block in ndjson_blocks(input_file, done, unit_bytes):
                    if isinstance(block, Item):  # a damaged gzip stream: the last item of the file
                        pool.submit_records(path, [error_record(block)], run.writes)
                        continue
                    first, data = block
                    pool.submit("ndjson", path, input_file.resource_type, first, data, run.writes,
                                f"{path} from line {first:,}")
                    take(pool.done())
                pool.mark()  # the file ended: write what it gave (as in _in_process)
            take(pool.done())
        take(pool.drain())
    except WorkerCrashed:
        run.flush()  # what was taken before the unit that was lost
        raise
    finally:
        pool.close()
        run.summary.worker_cpu_seconds, run.summary.worker_peak_rss_mb = pool.cpu_seconds, pool.peak_rss_mb


def _stream_bundle(run: IngestRun, pool: WorkerPool, input_file: InputFile, done: Progress, unit_bytes: int,
                   take: Callable) -> None:
    """Hand a big Bundle's entries out in blocks of about ``unit_bytes`` (:func:`bundle_blocks`), its
    entries without a resource (or its error) as error records in their place: neither this process
    nor a worker holds the file.  Before the first block of a later load-order rank (Encounters after
    Patients) the units out are taken, so workers find most of what the new rank references in the
    CDM (what a worker's view lacks, the loader maps again: the rows are the same either way)."""
    path = str(input_file.path)
    errors: list[Record] = []
    block_rank = None
    for block in bundle_blocks(input_file, done, unit_bytes):
        if isinstance(block, Item):
            errors.append(error_record(block))
            continue
        if errors:
            pool.submit_records(path, errors, run.writes)
            errors = []
        entries_rank, first, data = block
        if block_rank is not None and entries_rank > block_rank:
            take(pool.drain())
        block_rank = entries_rank
        pool.submit("entries", path, None, first, data, run.writes, f"{path} from entry {first:,}")
        take(pool.done())
    if errors:
        pool.submit_records(path, errors, run.writes)
