"""The FHIR R4 ingest run: read, hash, validate, map, write — in batches, nothing dropped.

For each batch of resources read (:mod:`node.ingest.reader`, already in dependency order):

1. the content hash of each resource (BLAKE2b of its canonical JSON, keys sorted) is compared with
   the one ``source_record`` holds for its key ``fhir|Type|id`` — one query per batch; an equal
   hash means **unchanged** and the resource is not even validated again;
2. the others are validated against the R4B models (:mod:`node.ingest.validate`) and mapped by the
   mapper registered for their type (:mod:`node.ingest.contract`); a failure of either is
   **quarantined** with file, line and reason;
3. the batch's rows are written in one transaction (:mod:`node.ingest.load`): an **updated**
   resource's previous rows are replaced, a new one's inserted.

After the last batch the observation periods of every person touched are recomputed
(:mod:`node.ingest.periods`).  The mappers are this package's modules plus the Observation /
genomics / imaging mappers when those modules are installed.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from sqlalchemy import Engine

from node.fhir_profile import DEFAULT_MRN_SYSTEM
from node.ingest import periods
from node.ingest.context import IDENTIFIED_TYPES, RunContext, identifier_key, source_key
from node.ingest.contract import MAPPERS, Unmappable
from node.ingest.load import BatchWriter, Mapped, Rejected, existing_hashes, key_column, row_problem
from node.ingest.reader import Item, Progress, discover, read
from node.ingest.summary import IngestSummary
from node.ingest.validate import problem

#: Mapper modules of this package (always present) and of the Observation-family work (optional).
MAPPER_MODULES = ("node.ingest.clinical", "node.ingest.medications", "node.ingest.administrative")
OPTIONAL_MAPPER_MODULES = ("node.ingest.observations", "node.ingest.genomics", "node.ingest.imaging")
#: Resource types radfed keeps no CDM rows for: counted as skipped, neither validated nor quarantined.
NO_CDM_TABLE = frozenset({"PractitionerRole", "OperationOutcome", "Provenance", "DocumentReference",
                          "CareTeam", "CarePlan", "Claim", "ExplanationOfBenefit", "SupplyDelivery",
                          "Goal", "Coverage"})
#: The CDM table a conditional reference to each identified type points at.
IDENTIFIED_TABLE = {"Organization": "care_site", "Location": "location", "Practitioner": "provider"}
MAPPING_ERROR = "MAPPING_ERROR"
BATCH = 5_000


def load_mappers() -> None:
    """Import every mapper module so its ``@mapper`` registrations run."""
    for name in MAPPER_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MAPPER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but something it imports does not: a real error
                raise


def content_hash(resource: dict) -> str:
    """Hash of a resource's canonical JSON: whitespace and key order do not make it "changed"."""
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=32).hexdigest()


class IngestRun:
    """One run over any number of files; feed items with :meth:`add`, then :meth:`finish`."""

    def __init__(self, engine: Engine, mrn_system: str = DEFAULT_MRN_SYSTEM, batch_size: int = BATCH):
        load_mappers()
        self.engine = engine
        self.ctx = RunContext(engine, mrn_system)
        self.writer = BatchWriter(engine)
        self.batch_size = batch_size
        self.summary = IngestSummary()
        self.persons: set[int] = set()
        self._pending: list[Item] = []
        self._rejected: list[Rejected] = []
        self._started = time.perf_counter()

    # -- input ---------------------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        if item.error is not None:
            self._reject(item, *item.error)
        else:
            self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self.flush()

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

    # -- batches -------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Map and write everything queued (one transaction)."""
        pending, self._pending = self._pending, []
        keyed = []
        for item in pending:
            resource = item.resource
            rid = resource.get("id")
            key = source_key(resource["resourceType"], rid) if isinstance(rid, str) and rid else None
            keyed.append((item, key, content_hash(resource)))
        known = existing_hashes(self.engine, [k for _i, k, _h in keyed if k])
        checked = [key is None or known.get(key) != digest and item.resource["resourceType"] not in NO_CDM_TABLE
                   for item, key, digest in keyed]
        # Validation is ~60% of a run's CPU.  A 2-process validation pool was measured slower on the
        # shared 2-core machine (benchmarks/README.md), so it runs here, only for changed resources.
        problems = iter([problem(i.resource) for (i, _k, _d), c in zip(keyed, checked) if c])
        mapped: list[Mapped] = []
        for (item, key, digest), check in zip(keyed, checked):
            unchanged = key in known and known[key] == digest
            found = next(problems) if check else None
            outcome = self._map(item, key, digest, unchanged, key in known, found)
            if outcome is not None:
                mapped.append(outcome)
        rejected, self._rejected = self._rejected, []
        if mapped or rejected:
            self.persons |= self.writer.write(mapped, rejected)

    def _map(self, item: Item, key: str | None, digest: str, unchanged: bool, replaces: bool,
             found: tuple[str, str] | None) -> Mapped | None:
        resource = item.resource
        resource_type = resource["resourceType"]
        self.ctx.current_type = resource_type
        if resource_type in NO_CDM_TABLE:
            self.summary.count(resource_type, "skipped", "no CDM table")
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
            self.summary.count(resource_type, "skipped", "no mapper")
            return None
        try:
            rows = fn(resource, self.ctx)
        except Unmappable as exc:
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
        main = next((r for r in rows if r.values.get(key_column(r.table)) == main_id), rows[0])
        self.ctx.mark_present(resource_type, resource["id"], main.table)
        if main.table == "visit_detail":
            self.ctx.mark_visit_detail(main_id, main.values["visit_occurrence_id"])
        self.summary.count(resource_type, "updated" if replaces else "loaded")
        return Mapped(key, digest, rows, aliases, replaces)

    def finish(self) -> IngestSummary:
        """Write the last batch, recompute observation periods, and return the summary."""
        self.flush()
        self.summary.persons_with_periods = periods.recompute(self.engine, self.persons)
        genomics = sys.modules.get("node.ingest.genomics")  # ctDNA flags need the loaded specimens (H2)
        if genomics is not None and self.persons:
            with self.engine.begin() as conn:
                genomics.reconcile_ctdna(conn, self.persons)
        self.summary.unmapped.update(self.ctx.unmapped)
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary


def ingest_paths(engine: Engine, paths: Iterable[str | Path], *, mrn_system: str = DEFAULT_MRN_SYSTEM,
                 batch_size: int = BATCH, progress: Callable[[int, int], None] | None = None) -> IngestSummary:
    """Load FHIR Bundles / NDJSON files and folders into the CDM; returns what the run did.

    ``progress(bytes_done, bytes_total)`` is called after each batch and at the end of each file.
    A missing path raises ``FileNotFoundError`` before anything is written.
    """
    files = discover(paths)
    run = IngestRun(engine, mrn_system, batch_size)
    total = sum(f.size for f in files)
    done = Progress()
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
    return run.finish()
