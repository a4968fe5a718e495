"""The FHIR R4 ingest run: read, hash, validate, map, write — in batches, nothing dropped.

For each batch of resources read (:mod:`node.ingest.reader`, already in dependency order):

1. the content hash of each resource (BLAKE2b of its canonical JSON, keys sorted) is compared with
   the one ``source_record`` holds for its key ``fhir|Type|id`` — one query per batch; an equal
   hash means **unchanged** and the resource is not even validated again;
2. the others are validated against the R4B models (:mod:`node.ingest.validate`) — in worker
   processes for large inputs, while this process maps and writes the batch before — and mapped
   by the mapper registered for their type (:mod:`node.ingest.contract`); a failure of either is
   **quarantined** with file, line and reason;
3. the batch's rows are written in one transaction (:mod:`node.ingest.load`): an **updated**
   resource's previous rows are replaced, a new one's inserted.

A resource whose patient is not loaded yet waits (in a temporary file) and is mapped again after
the last file — and after every other run loading the same PostgreSQL CDM at the same time has
loaded its files (:mod:`node.ingest.concurrency`); only then is it quarantined as
``UNKNOWN_PATIENT``.  Then references whose target arrived are filled and the observation periods
of every person touched are recomputed (:mod:`node.ingest.periods`).  Which mapper maps which resource
type is the table :data:`node.ingest.mappers.MAPPERS`.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import Engine

from cdm.db import refresh_statistics
from node.fhir_profile import DEFAULT_MRN_SYSTEM
from node.ingest import periods
from node.ingest.concurrency import RunLease
from node.ingest.context import IDENTIFIED_TYPES, UNKNOWN_PATIENT, RunContext, identifier_key, source_key
from node.ingest.contract import Unmappable
from node.ingest.load import (
    BatchWriter, Mapped, Rejected, existing_hashes, key_column, pending_references, row_problem,
)
from node.ingest.mappers import AFTER_LOAD, MAPPERS
from node.ingest.reader import Item, Progress, discover, read
from node.ingest.summary import IngestSummary
from node.ingest.validate import ValidationPool, problem, relaxed_gc

#: Resource types radfed keeps no CDM rows for: counted as skipped, neither validated nor quarantined.
NO_CDM_TABLE = frozenset({"PractitionerRole", "OperationOutcome", "Provenance", "CareTeam", "CarePlan", "Claim",
                          "ExplanationOfBenefit", "SupplyDelivery", "Goal", "Coverage"})
#: The CDM table a conditional reference to each identified type points at.
IDENTIFIED_TABLE = {"Organization": "care_site", "Location": "location", "Practitioner": "provider"}
MAPPING_ERROR = "MAPPING_ERROR"
BATCH = 5_000
#: Inputs smaller than this are validated in-process (see :func:`auto_workers`).
POOL_MIN_BYTES = 16 << 20
MAX_WORKERS = 4
#: Referenceable resources the run remembers per cache generation (two generations are kept).
CACHE_SIZE = 100_000


def content_hash(resource: dict) -> str:
    """Hash of a resource's canonical JSON: whitespace and key order do not make it "changed"."""
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=32).hexdigest()


@dataclass
class _Batch:
    """A batch read and hashed, its validation running in the pool while the previous one is written."""

    items: list[Item]
    keys: list[str | None]
    digests: list[str]
    known: dict[str, str]  # source_key -> content hash in the CDM when the batch was read
    submitted: list[bool]  # sent for validation (changed or new, and of a type radfed keeps)
    handle: object


class IngestRun:
    """One run over any number of files; feed items with :meth:`add`, then :meth:`finish`.

    Batches go through a two-stage pipeline: batch N is read, hashed and handed to the validation
    pool, then batch N-1 (validated meanwhile) is mapped and written.  Mapping and writing stay in
    this process and in input order, so ids, references, quarantine and counts do not depend on
    ``workers``.  ``force`` re-maps resources whose content is unchanged (after a vocabulary load).
    """

    def __init__(self, engine: Engine, mrn_system: str = DEFAULT_MRN_SYSTEM, batch_size: int = BATCH,
                 workers: int = 0, force: bool = False, cache_size: int = CACHE_SIZE):
        self.pool = ValidationPool(workers)  # first: the workers fork before this run opens connections
        self.engine = engine
        # A generation must outlast the two batches in flight, whose rows are not in the CDM yet.
        self.ctx = RunContext(engine, mrn_system, max(cache_size, 3 * batch_size))
        self.writer = BatchWriter(engine)
        self.lease = RunLease(engine)  # among the runs loading this CDM now
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

    # -- input ---------------------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        if item.error is not None:
            self._reject(item, *item.error)
        else:
            self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._advance()

    def _reject(self, item: Item, reason_code: str, reason: str) -> None:
        resource = item.resource or {}
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
        submitted = [not item.validated and item.resource["resourceType"] not in NO_CDM_TABLE
                     and (key is None or self.force or known.get(key) != digest)
                     for item, key, digest in zip(items, keys, digests)]
        chosen = [item for item, s in zip(items, submitted) if s]
        handle = self.pool.submit([i.resource for i in chosen], [i.raw for i in chosen])
        return _Batch(items, keys, digests, known, submitted, handle)

    def _complete(self, batch: _Batch) -> None:
        problems = iter(self.pool.result(batch.handle))
        known = batch.known
        # The batch before this one was written after this one's hashes were read: a resource present
        # in both (a duplicate in the export) must be judged against what that batch wrote.
        stale = [k for k in batch.keys if k in self._written_keys]
        if stale:
            known = self._reread(known, stale)
        mapped: list[Mapped] = []
        in_batch: set[str] = set()
        for item, key, digest, submitted in zip(batch.items, batch.keys, batch.digests, batch.submitted):
            if key in in_batch:
                # The same resource twice in one batch: write what precedes it, so this copy is judged
                # (unchanged / updated) against the one before it and the copy read last wins.
                self._write(mapped)
                mapped, in_batch = [], set()
                known = self._reread(known, [key])
            unchanged = not self.force and key in known and known[key] == digest
            if submitted:
                found = next(problems)
            elif unchanged or item.validated or item.resource["resourceType"] in NO_CDM_TABLE:
                found = None
            else:  # judged unchanged when read, changed by the batch before: validate it now
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

    def _map(self, item: Item, key: str | None, digest: str, unchanged: bool, replaces: bool,
             found: tuple[str, str] | None) -> Mapped | None:
        resource = item.resource
        resource_type = resource["resourceType"]
        self.ctx.current_type = resource_type
        if resource_type in NO_CDM_TABLE:
            self.summary.count(resource_type, "skipped", "no CDM table", item.source_file)
            return None
        if unchanged:
            self.ctx.mark_present(resource_type, resource["id"])
            self.summary.count(resource_type, "unchanged")
            return None
        if found is not None:
            self._reject(item, *found)
            return None
        fn = MAPPERS.get(resource_type)
        if fn is None:
            self.summary.count(resource_type, "skipped", "no mapper", item.source_file)
            return None
        self.ctx.unresolved, self.ctx.unmapped_codings = [], 0
        try:
            rows = fn(resource, self.ctx)
        except Unmappable as exc:
            if exc.code == UNKNOWN_PATIENT and not self._retrying:
                self._defer(item)
            else:
                self._reject(item, exc.code, exc.reason)
            return None
        except Exception as exc:  # noqa: BLE001 - a mapper failing on odd input must not lose the resource
            self._reject(item, MAPPING_ERROR, f"{resource_type} mapper failed: {type(exc).__name__}: {exc}")
            return None
        bad = next((p for p in map(row_problem, rows) if p), None)
        if bad is not None:
            self._reject(item, MAPPING_ERROR, bad)
            return None
        if not rows:
            self.summary.count(resource_type, "skipped", "maps to no CDM row")
            # An update that now maps to nothing (entered-in-error, not-done) removes the old rows.
            return Mapped(key, digest, [], [], True) if replaces else None
        aliases = []
        if resource_type in IDENTIFIED_TYPES:
            row_id = self.ctx.row_id(resource_type, resource["id"])
            for identifier in resource.get("identifier") or ():
                if identifier.get("value"):
                    alias = identifier_key(resource_type, identifier.get("system"), identifier["value"])
                    aliases.append((alias, IDENTIFIED_TABLE[resource_type], row_id))
                    self.ctx.add_alias(alias, row_id)
        main_id = self.ctx.row_id(resource_type, resource["id"])
        main = next((r for r in rows if r.values.get(key_column(r.table)) == main_id), None)
        if main is None:  # no row carries the resource's own id (ImagingStudy: one per series): the smallest
            main = min((r for r in rows if r.table == rows[0].table), key=lambda r: r.values[key_column(r.table)])
        own = main.values[key_column(main.table)]
        self.ctx.mark_present(resource_type, resource["id"], main.table, None if own == main_id else own)
        provides = [(key, main.table, own)]
        if main.table == "visit_detail":
            self.ctx.mark_visit_detail(main_id, main.values["visit_occurrence_id"])
            provides.append((key, "visit_occurrence", main.values["visit_occurrence_id"]))
        self.summary.count(resource_type, "updated" if replaces else "loaded")
        self.summary.unmapped[resource_type] += self.ctx.unmapped_codings
        return Mapped(key, digest, rows, aliases, replaces, (item.source_file, item.line),
                      pending_references(self.ctx.unresolved, rows), provides)

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

    def close(self) -> None:
        """Stop the validation workers of a run that will not be finished (an error, an interrupt)."""
        self.pool.terminate()
        self.lease.close()
        if self._deferred is not None:
            self._deferred.close()

    def finish(self) -> IngestSummary:
        """Write the last batch, retry what waited for its patient, recompute observation periods."""
        # on an error ingest_paths' close() stops the workers
        self.flush()
        # What still waits may be in the files of runs loading this CDM now: wait until they have loaded.
        self.lease.loaded(wait=self._deferred is not None or self.writer.waiting())
        with self.lease.finishing():
            if self._deferred is not None:
                self._retry_deferred()
            self.pool.close()
            self.writer.resolve_stored()
            self.summary.persons_with_periods = periods.recompute(self.engine, self.persons)
            refresh_statistics(self.engine, self.writer.rows_written)
            if self.persons:
                with self.engine.begin() as conn:
                    for step in AFTER_LOAD:  # facts spanning resources loaded apart (a ctDNA variant's Specimen)
                        step(conn, self.persons)
            self.summary.references_resolved = self.writer.references_resolved
            self.summary.unresolved_references = self.writer.open_references()
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary


def auto_workers(total_bytes: int) -> int:
    """Validation processes for an input of ``total_bytes``: none for small loads (a worker's first
    resources of each type build its model classes, ~1 s), else one per core but one, at most
    :data:`MAX_WORKERS` (on 2 cores, 2 workers measured 13% slower than 1: see benchmarks/README.md)."""
    if total_bytes < POOL_MIN_BYTES:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # This process maps and writes (~half the CPU of a load): it keeps a core, the workers share the rest.
    return max(0, min(MAX_WORKERS, cores - 1))


def ingest_paths(engine: Engine, paths: Iterable[str | Path], *, mrn_system: str = DEFAULT_MRN_SYSTEM,
                 batch_size: int = BATCH, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None, force: bool = False, cache_size: int = CACHE_SIZE) -> IngestSummary:
    """Load FHIR Bundles / NDJSON files and folders into the CDM; returns what the run did.

    ``progress(bytes_done, bytes_total)`` is called every 1,000 resources and at the end of each file.
    ``workers``: validation processes (``None``: :func:`auto_workers`; 0: validate in this process).
    ``force``: re-map resources even when unchanged since the last run (e.g. after a vocabulary load).
    ``cache_size``: referenceable resources remembered per generation (beyond it, references are
    resolved through the CDM; see :class:`~node.ingest.context.RecentCache`).
    A missing path raises ``FileNotFoundError`` before anything is written.
    """
    files = discover(paths)
    total = sum(f.size for f in files)
    thresholds = relaxed_gc()
    run = IngestRun(engine, mrn_system, batch_size, auto_workers(total) if workers is None else workers, force,
                    cache_size)
    done = Progress()
    last_report = 0
    try:
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
        return run.finish()
    finally:
        run.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()
