"""Parse, hash, validate and map FHIR resources in worker processes; the loading process writes.

A worker takes one unit of input — a block of whole NDJSON lines, a block of a big Bundle's entries
(streamed by the loading process, :func:`node.ingest.reader.bundle_blocks`) or one small Bundle
file — and returns, per resource and in input order, a :data:`Record`: its content hash, the hash
the CDM held for it when the worker looked, and its verdict (invalid, or mapped to rows).  The loading process
(:mod:`node.ingest.engine`) takes the records in order and only writes.

What a mapper asks of the run (:class:`~node.ingest.contract.MapContext`) may depend on what the
loader has written or mapped *meanwhile*: is the Patient loaded, which row does a reference
name, does the vocabulary know a code yet.  A worker answers from its own view (the CDM as it
reads it, the resources it mapped itself) and **records every question and answer**: the
person and reference look-ups, and every vocabulary look-up and site-local concept below
``concept()`` / ``unit()`` / ``known_concept()``.  A mapper is a deterministic function of the
resource and those answers, so the loader replays the questions against its own, authoritative
:class:`~node.ingest.context.RunContext` (:func:`replay`, dictionary look-ups mostly, and the
creation of the site-local concepts the worker predicted): when every answer is the same, the
worker's rows are exactly the rows the loader would have mapped; at the first different answer
it maps the resource itself, from its bytes.  The rows, quarantine, counts, pending references
and ids therefore never depend on the number of workers (tests/test_fhir_ingest_workers.py).

Likewise the "unchanged" judgement: the loader corrects the worker's view of the stored hash for
every resource it wrote after handing the unit out (a resource sent twice in one export).
"""

from __future__ import annotations

import copyreg
import os
import pickle
import resource
import time
from typing import NamedTuple
from pathlib import Path

import orjson
from sqlalchemy import Engine

from cdm.db import layout_of, open_engine, with_layout
from cdm.vocabulary import ConceptMatch, Vocabulary, local_concept_id, normalise_code
from node.ingest.context import RunContext, source_key
from node.ingest.contract import Unmappable
from node.ingest.load import existing_hashes, rows_problem
from node.ingest.mappers import MAPPERS
from node.ingest.mapping import (
    MAPPING_ERROR, NO_CDM_TABLE, Provided, content_hash, failure_reason, identifiers_of, remember,
)
from node.ingest.reader import InputFile, Item, ndjson_item, read_whole_bundle
from node.ingest.validate import _warm, problem, relaxed_gc

# What a worker recorded a mapper asking (first element of each transcript entry; the answer is last).
PERSON, REFERENCE, LOOKUP, CONCEPT = range(4)
#: An answer that was an exception (``UNKNOWN_PATIENT``, ``NO_PATIENT``): (RAISED, code, reason).
RAISED = "raised"

# Verdicts of a record.
ERROR = 0      # not a resource (not JSON, no resourceType): payload (code, reason, type hint)
SKIPPED = 1    # a type radfed keeps no rows for
UNCHANGED = 2  # the stored hash equals the content hash (not validated, not mapped)
INVALID = 3    # payload (code, reason)
MAPPED = 4     # payload :class:`Premapped`
REDO = 5       # the worker could not tell (its database read failed): the loader maps it


class Premapped(NamedTuple):
    """What a worker's mapper made of a resource and the questions it asked on the way (a named
    tuple: one per resource crosses to the loader, and a tuple unpickles ~4x faster than a dataclass)."""

    calls: list[tuple]
    rows: list[tuple[str, dict]]  # (table, values)
    unmapped: int = 0  # codings without a standard concept
    raised: tuple[str, str] | None = None  # (code, reason) of an Unmappable / a failed mapper
    bad: str | None = None  # why a row cannot be written (load.row_problem), a mapper bug
    facts: Provided | None = None  # what the resource provides to later references (mapping.provided)


#: One resource's record: (line, raw, resource type, id, content hash, stored hash, verdict, payload).
#: ``raw`` is ``(start, end)`` in the unit's block (the loader holds the block: NDJSON lines, or a big
#: Bundle's entries) or, for an entry of a Bundle file mapped whole, its JSON bytes (references
#: already rewritten): the loader parses it when it must map the resource itself or quarantine it.
Record = tuple


def error_record(item: Item, raw=None) -> Record:
    """The record of a line or entry that is not a resource (``item.error`` says why); ``raw``: where
    its bytes are, if not ``item.raw``."""
    return (item.line, item.raw if raw is None else raw, item.type_hint, None, None, None, ERROR,
            (*item.error, item.type_hint))


def _match(found: ConceptMatch | None) -> tuple | None:
    return None if found is None else (found.concept_id, found.source_concept_id, found.domain_id, found.is_local)


class RecordingVocabulary(Vocabulary):
    """Read-only vocabulary look-ups that record themselves; ``concept_for`` of a code the CDM does
    not know yet predicts the site-local concept the loader will create (same id rule, no write)."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self.log: list[tuple] = []
        # (vocabulary, code) -> (match, its recorded form): every coding a mapper reads is looked up
        # and recorded, most of them codes met before; the match is the base cache's.
        self._answers: dict[tuple[str, str], tuple[ConceptMatch | None, tuple | None]] = {}

    def _answer(self, key: tuple[str, str]) -> tuple[ConceptMatch | None, tuple | None]:
        found = Vocabulary.lookup(self, *key)
        answer = self._answers[key] = (found, _match(found))
        return answer

    def lookup(self, vocabulary_id: str, code: str) -> ConceptMatch | None:
        key = (vocabulary_id, code)
        answer = self._answers.get(key) or self._answer(key)
        self.log.append((LOOKUP, vocabulary_id, code, answer[1]))
        return answer[0]

    def concept_for(self, vocabulary_id: str, code: str, name: str | None = None, domain_id: str | None = None,
                    conn=None, system_uri: str | None = None) -> ConceptMatch:
        key = (vocabulary_id, normalise_code(vocabulary_id, code))
        found, recorded = self._answers.get(key) or self._answer(key)
        if found is None:  # the loader creates it; a hash collision there shows up as a different answer
            local = local_concept_id(*key)
            found = self._cache[key] = ConceptMatch(local, local, domain_id, True)
            recorded = _match(found)
            self._answers[key] = (found, recorded)
        self.log.append((CONCEPT, vocabulary_id, code, name, domain_id, system_uri, recorded))
        return found


class RecordingContext(RunContext):
    """A worker's :class:`RunContext`: its person and reference answers are recorded too."""

    def __init__(self, engine: Engine, mrn_system: str, cache_size: int):
        super().__init__(engine, mrn_system, cache_size)
        self.vocabulary = RecordingVocabulary(engine)
        self.failed = False  # a question failed other than by Unmappable (a database error)
        # (domain hint, the CodeableConcept's JSON) -> (concept, the questions it asked, unmapped codings)
        self._concepts: dict[tuple[str | None, bytes], tuple[ConceptMatch, list[tuple], int]] = {}

    def concept(self, codeable: dict | None, domain_hint: str | None = None) -> ConceptMatch:
        """:meth:`RunContext.concept`, remembered: its answer and questions depend on the CodeableConcept
        and the vocabulary's answers alone.  This vocabulary changes an answer only from "unknown" to the
        site-local concept it creates (:class:`RecordingVocabulary`), so a CodeableConcept is remembered
        once every look-up it made found a concept: asked again, it would ask and get the same.  Most
        CodeableConcepts of an export repeat."""
        try:
            key = (domain_hint, orjson.dumps(codeable))
        except TypeError:  # not JSON (orjson.JSONEncodeError): not remembered
            return RunContext.concept(self, codeable, domain_hint)
        log = self.vocabulary.log
        known = self._concepts.get(key)
        if known is not None:
            log.extend(known[1])
            self.unmapped_codings += known[2]
            return known[0]
        asked, unmapped = len(log), self.unmapped_codings
        found = RunContext.concept(self, codeable, domain_hint)
        questions = log[asked:]
        if all(q[-1] is not None for q in questions):  # else an answer may change: asked again next time
            if len(self._concepts) >= CONCEPTS_KEPT:  # bounded: a site sending ever new texts stays flat
                self._concepts.clear()
            self._concepts[key] = (found, questions, self.unmapped_codings - unmapped)
        return found

    def person_id(self, reference: str | None) -> int:
        try:
            found = RunContext.person_id(self, reference)
        except Unmappable as exc:
            self.vocabulary.log.append((PERSON, reference, (RAISED, exc.code, exc.reason)))
            raise
        except Exception:
            self.failed = True
            raise
        self.vocabulary.log.append((PERSON, reference, found))
        return found

    def reference_id(self, reference: str | None, cdm_table: str) -> int | None:
        try:
            found = RunContext.reference_id(self, reference, cdm_table)
        except Unmappable as exc:
            self.vocabulary.log.append((REFERENCE, reference, cdm_table, (RAISED, exc.code, exc.reason)))
            raise
        except Exception:
            self.failed = True
            raise
        self.vocabulary.log.append((REFERENCE, reference, cdm_table, found))
        return found


#: CodeableConcepts a worker remembers the answer of (then it forgets them all and starts again).
CONCEPTS_KEPT = 50_000


def replay(ctx: RunContext, calls: list[tuple], asked: set | None = None) -> bool:
    """Ask ``ctx`` what a worker's mapper asked, in order; True when every answer is the same (then the
    worker's rows are the ones ``ctx`` would give).  Stops at the first difference: the questions
    asked until then are the ones mapping the resource again asks first, so nothing is done twice.

    ``asked``: the questions this replay already asked of ``ctx`` with the same answer (the caller
    keeps it for the run).  Of those, a vocabulary look-up or concept and a patient that were *found*
    are not asked again: once found, ``ctx`` gives them the same answer for the rest of the run (its
    vocabulary caches what it found; a person once present stays present), and asking changes nothing
    (a concept's preferred name is already the smaller one).  An answer of "unknown" or "absent" can
    change and is always asked again, and so are references (a resource updated later in the run may
    map to another table).  Most questions of an export repeat (the same codes, the same patient).
    """
    vocabulary = ctx.vocabulary
    for call in calls:
        if asked is not None and call in asked:
            continue
        kind = call[0]
        try:
            if kind == PERSON:
                found = ctx.person_id(call[1])
            elif kind == REFERENCE:
                found = ctx.reference_id(call[1], call[2])
            elif kind == LOOKUP:
                found = _match(vocabulary.lookup(call[1], call[2]))
            else:
                found = _match(vocabulary.concept_for(call[1], call[2], call[3], call[4], system_uri=call[5]))
        except Unmappable as exc:
            found = (RAISED, exc.code, exc.reason)
        if found != call[-1]:
            return False
        if asked is not None and kind != REFERENCE and found is not None and (kind != PERSON or type(found) is int):
            if len(asked) >= ASKED_MAX:
                asked.clear()  # bounded: distinct codes and patients of a hospital export
            asked.add(call)
    return True


#: Questions :func:`replay` remembers as answered (then it forgets them all and starts again).
ASKED_MAX = 50_000


#: The references nearly every resource makes (element, target type, the table it is asked as).
COMMON_REFERENCES = (("subject", "Patient", "person"), ("patient", "Patient", "person"),
                     ("encounter", "Encounter", "visit_occurrence"), ("context", "Encounter", "visit_occurrence"),
                     ("specimen", "Specimen", "specimen"))


def expect_references(ctx: RunContext, resources: list[dict]) -> None:
    """Tell ``ctx`` the rows a unit's mappers will ask about that it does not hold
    (:meth:`~node.ingest.context.RunContext.expect`): the Patients, Encounters and Specimens the
    resources name by relative reference.  Beyond the caches (a million resources) each would
    otherwise cost a query of its own; in a run the caches cover, none is missing and nothing is
    asked.  Only a hint: what the mappers ask, and answer, is unchanged."""
    expected: dict[str, set[int]] = {}
    seen: set[tuple[str, str]] = set()  # a unit names the same Patient and Encounter again and again
    for resource in resources:
        for element, target_type, table in COMMON_REFERENCES:
            value = resource.get(element)
            reference = value.get("reference") if type(value) is dict else None
            if type(reference) is not str or (target_type, reference) in seen:
                continue
            seen.add((target_type, reference))
            if reference.startswith(target_type) and reference[len(target_type):][:1] == "/":
                target_id = reference[len(target_type) + 1:]
                if target_id and "/" not in target_id and not ctx.holds(target_type, target_id):
                    expected.setdefault(table, set()).add(ctx.row_id(target_type, target_id))
    ctx.expect(expected)


# -- the worker process ----------------------------------------------------------------------------


def ndjson_entries(path: str, type_hint: str | None, first: int, block: bytes) -> list[tuple]:
    """``(line number, (start, end) in the block, resource, None)`` of each line of an NDJSON block,
    ``(line number, (start, end), None, Item)`` of a line that is not a resource (:func:`ndjson_item`'s
    verdict; blank lines give nothing).  A line that parses to a resource makes no :class:`Item`:
    nearly every line does, and the record needs only its number, place and resource."""
    entries = []
    loads, size = orjson.loads, len(block)
    start, number = 0, first
    while start < size:
        end = block.find(b"\n", start) + 1 or size
        try:
            resource = loads(block[start:end])
        except orjson.JSONDecodeError:
            resource = None
        if resource.__class__ is dict and resource.get("resourceType").__class__ is str:
            entries.append((number, (start, end), resource, None))
        else:  # blank, not JSON or not a resource: as the reader says
            item = ndjson_item(path, number, block[start:end], type_hint)
            if item is not None:
                entries.append((number, (start, end), None, item))
        start, number = end, number + 1
    return entries


def bundle_entries(block: bytes) -> list[tuple]:
    """``(entry number, (start, end) of its JSON in the block, resource, None)`` of each line of a block
    of a big Bundle's entries (:func:`node.ingest.reader.bundle_blocks`: ``<number> <resource>``, one
    resource each, made by the loading process)."""
    entries = []
    loads, find, size = orjson.loads, block.find, len(block)
    start = 0
    while start < size:
        space, end = find(b" ", start), find(b"\n", start)
        entries.append((int(block[start:space]), (space + 1, end), loads(block[space + 1:end]), None))
        start = end + 1
    return entries


class _Worker:
    """The state of one worker process: its engine and context, for every unit it maps."""

    def __init__(self, url: str, mrn_system: str, cache_size: int, force: bool):
        self.engine = open_engine(url)
        self.ctx = RecordingContext(self.engine, mrn_system, cache_size)
        self.force = force

    def unit(self, task: tuple) -> list[Record]:
        kind, path, type_hint, first, block = task
        if kind == "ndjson":
            entries = ndjson_entries(path, type_hint, first, block)
        elif kind == "entries":
            entries = bundle_entries(block)
        else:  # a Bundle file, read whole (the loader streams a big one: "entries")
            entries = [(i.line, i.raw if i.raw is not None else orjson.dumps(i.resource if i.resource is not None else {}),
                        i.resource if i.error is None else None, i)
                       for i in read_whole_bundle(InputFile(Path(path), "bundle"))]
        keys = [source_key(r["resourceType"], r["id"]) if r is not None and isinstance(r.get("id"), str) and r["id"]
                else None for _, _, r, _ in entries]
        # asked under force too: a resource loaded before replaces its rows (the loader's ``replaces``)
        known = existing_hashes(self.engine, [k for k in keys if k])
        digests = [None if r is None else content_hash(r) for _, _, r, _ in entries]
        # only the resources this unit will map ask about their references (a re-run asks nothing)
        expect_references(self.ctx, [r for (_, _, r, _), key, digest in zip(entries, keys, digests)
                                     if digest is not None and (self.force or key is None or known.get(key) != digest)
                                     and r["resourceType"] not in NO_CDM_TABLE])
        return [self.record(*entry, key, known.get(key), digest) for entry, key, digest in zip(entries, keys, digests)]

    def record(self, line: int, raw, resource: dict | None, item: Item | None, key: str | None, stored: str | None,
               digest: str | None) -> Record:
        """``resource`` ``None``: ``item`` says why the line or entry is not one."""
        if resource is None:
            return error_record(item, raw)
        resource_type, resource_id = resource["resourceType"], resource.get("id")
        head = (line, raw, resource_type, resource_id if isinstance(resource_id, str) else None, digest, stored)
        if resource_type in NO_CDM_TABLE:
            return (*head, SKIPPED, None)
        if key is not None and stored == digest and not self.force:
            self.ctx.mark_present(resource_type, resource_id)  # as the loader does
            return (*head, UNCHANGED, None)
        found = problem(resource)
        if found is not None:
            return (*head, INVALID, found)
        return (*head, *self.map(key, resource))

    def map(self, key: str, resource: dict) -> tuple[int, Premapped | None]:
        ctx = self.ctx
        resource_type = resource["resourceType"]
        fn = MAPPERS.get(resource_type)
        if fn is None:
            return MAPPED, Premapped([], [])
        ctx.current_type = resource_type
        ctx.unresolved, ctx.unmapped_codings, ctx.failed = [], 0, False
        ctx.vocabulary.log = log = []
        raised = None
        rows = []
        try:
            rows = fn(resource, ctx)
        except Unmappable as exc:
            raised = (exc.code, exc.reason)
        except Exception as exc:  # noqa: BLE001 - as the loader: a mapper failing on odd input is quarantined
            raised = (MAPPING_ERROR, failure_reason(resource_type, exc))
        if ctx.failed:
            return REDO, None
        # the loader's checks of the rows, made here: they depend on the rows alone
        bad = rows_problem(rows) if raised is None else None
        facts = None
        if rows and raised is None and bad is None:  # also what later resources this worker maps may ask
            facts = remember(ctx, key, resource_type, resource["id"], identifiers_of(resource), rows)
        return MAPPED, Premapped(log, [(r.table, r.values) for r in rows], ctx.unmapped_codings, raised, bad, facts)


_worker: _Worker | None = None


def start(url: str, mrn_system: str, cache_size: int, force: bool) -> None:
    """A worker process's initializer: its own engine and context; the validator's models built."""
    global _worker
    _warm()
    relaxed_gc()
    _worker = _Worker(url, mrn_system, cache_size, force)


def map_unit(task: tuple) -> tuple[float, float]:
    """Map one unit ``(kind, path, type hint, first line, name)``: the block (NDJSON lines, a big
    Bundle's entries) is the file ``name.in`` (the worker deletes it), the records go to ``name.out``
    (:mod:`node.ingest.pool` says why files).  Returns the CPU seconds the worker spent and its peak
    RSS in MB so far (what a worker runs)."""
    started = time.process_time()
    kind, path, type_hint, first, name = task
    block = None
    if kind != "bundle":
        with open(name + ".in", "rb") as handle:
            block = handle.read()
        os.unlink(name + ".in")
    records = _worker.unit((kind, path, type_hint, first, block))
    with open(name + ".part", "wb") as handle:
        ship(records, handle)
    os.replace(name + ".part", name + ".out")
    return time.process_time() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _new_named_tuple(value: tuple) -> tuple:
    """What pickle's default ``__reduce_ex__`` makes of a named tuple (``copyreg.__newobj__`` of its
    class and fields: the same bytes), without its generic detour through ``__getnewargs__``."""
    return copyreg.__newobj__, (value.__class__, *value)


#: How the records' named tuples are pickled (two per mapped resource): ~11% fewer instructions to
#: pickle a unit's records, the bytes unchanged (tests/test_fhir_ingest_workers.py).
_SHIPPING = {**copyreg.dispatch_table, Premapped: _new_named_tuple, Provided: _new_named_tuple}


def ship(records: list[Record], handle) -> None:
    """Pickle a unit's records to ``handle``: ``pickle.dump(records, handle, HIGHEST_PROTOCOL)``, cheaper."""
    pickler = pickle.Pickler(handle, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _SHIPPING
    pickler.dump(records)


def worker_url(engine: Engine) -> str:
    """The URL a worker opens the same CDM with (with an attached CDM's layout, and the password)."""
    url = engine.url.render_as_string(hide_password=False)
    layout = layout_of(engine)
    if layout is None:
        return url
    if engine.dialect.name == "postgresql":
        params = {"cdm_schema": layout.cdm_schema, "vocabulary_schema": layout.vocabulary_schema,
                  "radfed_schema": layout.radfed_schema}
    else:
        params = {"cdm_file": layout.cdm_file, **({"vocabulary_file": layout.vocabulary_file}
                                                  if layout.vocabulary_file else {})}
    return with_layout(url, params)
