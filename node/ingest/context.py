"""The :class:`~node.ingest.contract.MapContext` of one ingest run.

Mappers ask it for ids, persons, references and concepts; it answers from what this run has
mapped so far and, for what earlier runs loaded, from the CDM (a person is the ``person`` row whose
id is ``row_id("Patient", id)``; any other target the row of its stable id in the table asked for).
Answers are cached, so a reference costs one query per distinct target and run.

Conditional references (``Practitioner?identifier=system|value``, as Synthea's bulk export writes
them, FHIR R4 §3.1.0.4.5 "conditional references") resolve through the identifiers of the
Organization / Location / Practitioner resources: within a run from memory, across runs through
``source_record`` alias keys the engine writes for those identifiers.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, bindparam, func, select

from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import SITE_LOCAL_MIN, ConceptMatch, Vocabulary, vocabulary_for_uri
from node.fhir_profile import DEFAULT_MRN_SYSTEM, UCUM
from node.ingest.contract import Unmappable

UNKNOWN_PATIENT = "UNKNOWN_PATIENT"
NO_PATIENT = "NO_PATIENT"
NO_CONCEPT = ConceptMatch(0, 0, None, False)
#: Resource types whose identifiers conditional references may use.
IDENTIFIED_TYPES = ("Organization", "Location", "Practitioner")
#: Types nothing references by id: not remembered, so memory grows with patients, not with events.
UNREFERENCED = frozenset({"Observation", "DiagnosticReport", "MedicationRequest", "MedicationStatement",
                          "MedicationAdministration", "Immunization", "AllergyIntolerance"})
SOURCE_RECORD = tables["source_record"]
#: Row ids per query of :meth:`RunContext.expect` (SQLite's default limit is 32,766 parameters).
EXPECT_CHUNK = 5_000
#: The CDM table the main row of each referenceable FHIR type is in: a reference asked as that table
#: and not found is *pending* (filled when the target arrives); asked as another table it is not.
REFERENCE_TABLES = {"Patient": "person", "Practitioner": "provider", "Organization": "care_site",
                    "Location": "location", "Encounter": "visit_occurrence", "Specimen": "specimen",
                    "Procedure": "procedure_occurrence", "Device": "device_exposure",
                    "ImagingStudy": "image_occurrence"}
#: Types whose rows do not carry the resource's own stable id (an ImagingStudy is one row per series,
#: id from the SeriesInstanceUID): a reference to one means its row with the smallest id.
MAIN_ROW_BY_RECORD = frozenset({"ImagingStudy"})


def source_key(resource_type: str, resource_id: str) -> str:
    """The ``source_record.source_key`` of a resource: ``fhir|Type|id``."""
    return f"fhir|{resource_type}|{resource_id}"


def identifier_key(resource_type: str, system: str | None, value: str) -> str:
    """The alias key of a conditional reference target: ``fhir|Type?identifier=system|value``."""
    return f"fhir|{resource_type}?identifier={system or ''}|{value}"


def is_unmapped(match: ConceptMatch) -> bool:
    """True for a code the node has no standard concept for: its own site-local concept (no mapping
    found), or 0 for a code it knows without a standard one (``cdm.vocabulary.unmapped_clause``
    counts the same in the CDM)."""
    if match.concept_id == 0:
        return match.source_concept_id != 0
    return match.concept_id >= SITE_LOCAL_MIN and match.concept_id == match.source_concept_id


class RecentCache:
    """A dict that forgets its oldest entries: two generations of at most ``size`` keys each.

    The run remembers what it mapped so that references resolve without a query, but an export of
    millions of resources must not make the run's memory grow with it.  A key forgotten here is
    asked of the CDM (where the batch writer has put it by then: a generation holds far more than
    the two batches in flight), so forgetting costs a query, never a wrong answer.
    """

    def __init__(self, size: int = 100_000, on_forget=None):
        self.size = size
        self._new: dict = {}
        self._old: dict = {}
        self._on_forget = on_forget  # called when the oldest generation is dropped

    def __setitem__(self, key, value) -> None:
        if len(self._new) >= self.size:
            self._old, self._new = self._new, {}
            if self._on_forget is not None:
                self._on_forget()
        self._new[key] = value

    def get(self, key, default=None):
        found = self._new.get(key, _MISSING)
        if found is _MISSING:
            found = self._old.get(key, _MISSING)
        return default if found is _MISSING else found

    def __contains__(self, key) -> bool:
        return key in self._new or key in self._old

    def __getitem__(self, key):
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


_MISSING = object()


def _split_uncached(reference: str | None) -> tuple[str, str] | None:
    if not reference or "?" in reference:
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":  # Type/id/_history/version
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-1]:
        return None
    return parts[-2], parts[-1]


_split_reference = lru_cache(maxsize=1 << 12)(_split_uncached)


# The statements a run asks the CDM, built once with bound parameters (see _row_query).
_ALIAS_QUERY = select(SOURCE_RECORD.c.cdm_id).where(
    SOURCE_RECORD.c.source_key == bindparam("source_key"), SOURCE_RECORD.c.cdm_table == bindparam("cdm_table")).limit(1)
_FIRST_ROW_QUERY = select(func.min(SOURCE_RECORD.c.cdm_id)).where(
    SOURCE_RECORD.c.source_key == bindparam("source_key"), SOURCE_RECORD.c.cdm_table == bindparam("cdm_table"))
_PARENT_VISIT_QUERY = select(tables["visit_detail"].c.visit_occurrence_id).where(
    tables["visit_detail"].c.visit_detail_id == bindparam("visit_detail_id"))


@lru_cache(maxsize=None)
def _row_query(table: str, column: str):
    """``SELECT column FROM table WHERE column = :row_id LIMIT 1``, built once: building the statement
    cost SQLAlchemy more than running it (~80 against ~27 us on SQLite), once per target a run asks."""
    target = tables[table]
    return select(target.c[column]).where(target.c[column] == bindparam("row_id")).limit(1)


@lru_cache(maxsize=None)
def _rows_query(table: str, column: str):
    """``SELECT column FROM table WHERE column IN :row_ids`` (one expanding parameter), built once."""
    target = tables[table]
    return select(target.c[column]).where(target.c[column].in_(bindparam("row_ids", expanding=True)))


class RunContext:
    """Answers mappers' questions during one run (see :class:`~node.ingest.contract.MapContext`)."""

    def __init__(self, engine: Engine, mrn_system: str = DEFAULT_MRN_SYSTEM, cache_size: int = 100_000):
        self.engine = engine
        self.mrn_system = mrn_system
        self.vocabulary = Vocabulary(engine)
        # reference -> person_id of the person_id() answers found: the same Patient is named by every
        # resource about it.  An answer stands as long as what gave it (``_present`` / ``_db_hits``,
        # which only grow) forgets nothing: emptied whenever either drops a generation.
        self._persons: dict[str, int] = {}
        # (resource_type, id) of resources this run mapped (-> table of their main row) or found
        # unchanged (-> None: the table is asked of the CDM).  Only referenceable types are kept.
        # Bounded (RecentCache): memory stays flat however large the export.
        self._present = RecentCache(cache_size, self._persons.clear)
        self._detail_visit = RecentCache(cache_size)  # visit_detail id -> its visit_occurrence id
        self._db_hits = RecentCache(cache_size, self._persons.clear)
        self._main_ids = RecentCache(cache_size)  # (type, id) -> main row id, when not row_id(type, id)
        self._aliases: dict[str, int] = {}  # identifier key -> row id (organisations, practitioners: few)
        #: table -> row ids the resources being mapped will probably ask about (:meth:`expect`)
        self._expected: dict[str, set[int]] = {}
        #: codings of the resource being mapped that found no standard concept (the engine adds them to
        #: the summary when the resource's rows are written, so the summary counts what the CDM holds)
        self.unmapped_codings = 0
        self.current_type: str | None = None
        #: (target source key, CDM table) of the references of the resource being mapped that name a
        #: resource not loaded (yet); the engine turns them into ``pending_reference`` rows.
        self.unresolved: list[tuple[str, str]] = []

    # -- bookkeeping the engine calls ------------------------------------------------------------

    def mark_present(self, resource_type: str, resource_id: str, table: str | None = None,
                     row_id: int | None = None) -> None:
        """``row_id``: the main row's id when it is not the resource's own stable id (an ImagingStudy's
        first series)."""
        if resource_type not in UNREFERENCED:
            self._present[(resource_type, resource_id)] = table
            if row_id is not None:
                self._main_ids[(resource_type, resource_id)] = row_id

    def mark_visit_detail(self, visit_detail_id: int, visit_occurrence_id: int) -> None:
        """A sub-encounter became a visit_detail: references to it as a visit mean its parent visit."""
        self._detail_visit[visit_detail_id] = visit_occurrence_id

    def add_alias(self, key: str, row_id: int) -> None:
        self._aliases[key] = row_id

    # -- MapContext -------------------------------------------------------------------------------

    def row_id(self, resource_type: str, resource_id: str, *part: object) -> int:
        return stable_id("fhir", resource_type, resource_id, *part)

    def _split(self, reference: str | None) -> tuple[str, str] | None:
        """``(Type, id)`` of a literal reference (relative, absolute or versioned), else ``None``."""
        if reference.__class__ is str:  # the same Patient / Encounter is named again and again
            return _split_reference(reference)
        return _split_uncached(reference)

    def _pending(self, resource_type: str, key: str, cdm_table: str) -> None:
        if REFERENCE_TABLES.get(resource_type) == cdm_table:
            self.unresolved.append((key, cdm_table))

    def _conditional(self, reference: str, cdm_table: str) -> int | None:
        """The row a ``Type?identifier=system|value`` reference names, through the identifier aliases."""
        resource_type, _, query = reference.partition("?identifier=")
        system, _, value = query.rpartition("|")
        key = identifier_key(resource_type, system or None, value)
        if key not in self._aliases:
            with self.engine.connect() as conn:
                found = conn.execute(_ALIAS_QUERY, {"source_key": key, "cdm_table": cdm_table}).first()
            if found is None:
                self._pending(resource_type, key, cdm_table)
                return None
            self._aliases[key] = found[0]
        return self._aliases[key]

    def expect(self, expected: dict[str, set[int]]) -> None:
        """The row ids, by table, the next resources will probably ask about (a unit's references, or
        what a worker found for them); replaces what the unit before expected.  The first one not
        known here is then asked of the CDM together with the others of its table, in one query,
        instead of one query each: an export larger than the caches (a million resources: Specimens
        and Patients loaded long before the Observations that reference them) otherwise costs a
        query per referenced resource.  Only what is found is remembered, as :meth:`_exists` does;
        what is not found is asked again when it is asked."""
        self._expected = expected

    def holds(self, resource_type: str, resource_id: str) -> bool:
        """Whether this run mapped the resource, or found it unchanged, and still remembers it."""
        return (resource_type, resource_id) in self._present

    def _exists(self, table: str, column: str, row_id: int) -> bool:
        key = (table, row_id)
        if key not in self._db_hits:
            expected = self._expected.get(table)
            if expected and row_id in expected:
                del self._expected[table]
                asked = sorted(i for i in expected if (table, i) not in self._db_hits)
                with self.engine.connect() as conn:
                    for start in range(0, len(asked), EXPECT_CHUNK):
                        for (found,) in conn.execute(_rows_query(table, column),
                                                     {"row_ids": asked[start:start + EXPECT_CHUNK]}):
                            self._db_hits[(table, found)] = True
                if key in self._db_hits:
                    return True
            with self.engine.connect() as conn:
                found = conn.execute(_row_query(table, column), {"row_id": row_id}).first()
            if found is None:
                return False  # not cached: a later batch of this run may write it
            self._db_hits[key] = True
        return True

    def person_id(self, reference: str | None) -> int:
        found = self._persons.get(reference) if reference.__class__ is str else None
        if found is not None:
            return found
        if not reference:
            raise Unmappable(NO_PATIENT, f"{self.current_type} has no patient (subject / patient reference): "
                                         "radfed keeps only facts about a person")
        target = self._split(reference)
        if target is None and reference.startswith("urn:"):
            raise Unmappable(UNKNOWN_PATIENT, f"the Patient {reference} is absent: no entry of this Bundle has "
                                              "that fullUrl (export the Bundle with its Patient)")
        if target is None or target[0] != "Patient":
            raise Unmappable(NO_PATIENT, f"subject {reference!r} is not a Patient reference: radfed keeps only "
                                         "facts about a person")
        person_id = self.row_id("Patient", target[1])
        if target in self._present or self._exists("person", "person_id", person_id):
            if len(self._persons) >= self._present.size:  # ever new spellings of references: stay bounded
                self._persons.clear()
            self._persons[reference] = person_id
            return person_id
        raise Unmappable(UNKNOWN_PATIENT, f"the Patient {reference} is absent: it was not loaded in this run or "
                                          "an earlier one (load the Patient, then this file again: the resource "
                                          "is kept in the quarantine until then)")

    def reference_id(self, reference: str | None, cdm_table: str) -> int | None:
        if not reference:  # most optional references are absent
            return None
        if "?identifier=" in reference:
            return self._conditional(reference, cdm_table)
        target = self._split(reference)
        if target is None:
            if reference and reference.startswith("urn:"):  # a Bundle entry that is not in the Bundle
                self.unresolved.append((reference, cdm_table))
            return None
        row_id = self.row_id(*target)
        known = self._present.get(target, False)  # table, None (unchanged: ask the CDM) or False (not seen)
        if known == cdm_table:
            return self._main_ids.get(target, row_id)
        as_visit = cdm_table == "visit_occurrence" and target[0] == "Encounter"
        if known not in (None, False):  # mapped in this run, to another table
            return self._parent_visit(row_id) if as_visit and known == "visit_detail" else None
        table = tables.get(cdm_table)
        if table is None or len(table.primary_key.columns) != 1:
            return None
        column = next(iter(table.primary_key.columns)).name
        if self._exists(cdm_table, column, row_id):
            return row_id
        found = self._parent_visit(row_id) if as_visit else self._first_row(target, cdm_table)
        if found is None:
            self._pending(target[0], source_key(*target), cdm_table)
        return found

    def _first_row(self, target: tuple[str, str], cdm_table: str) -> int | None:
        """The smallest id of the ``cdm_table`` rows a resource wrote whose rows do not carry its own
        stable id (an ImagingStudy's series), through ``source_record``."""
        if REFERENCE_TABLES.get(target[0]) != cdm_table or target[0] not in MAIN_ROW_BY_RECORD:
            return None
        if target not in self._main_ids:
            with self.engine.connect() as conn:
                found = conn.execute(_FIRST_ROW_QUERY, {"source_key": source_key(*target), "cdm_table": cdm_table}).scalar()
            if found is None:
                return None
            self._main_ids[target] = found
        return self._main_ids[target]

    def _parent_visit(self, visit_detail_id: int) -> int | None:
        if visit_detail_id not in self._detail_visit:
            with self.engine.connect() as conn:
                found = conn.execute(_PARENT_VISIT_QUERY, {"visit_detail_id": visit_detail_id}).first()
            if found is None:
                return None
            self._detail_visit[visit_detail_id] = found[0]
        return self._detail_visit[visit_detail_id]

    def concept(self, codeable: dict | None, domain_hint: str | None = None) -> ConceptMatch:
        codings = [c for c in (codeable or {}).get("coding") or () if c.get("code")]
        if not codings:
            return NO_CONCEPT
        first = codings[0]
        system = first.get("system")
        vocabulary_id = vocabulary_for_uri(system)  # the first coding's: looked up, then created if need be
        for coding in codings:
            known = self._standard(vocabulary_id if coding is first else vocabulary_for_uri(coding.get("system")),
                                   coding["code"])
            if known is not None:
                return known
        return self._concept_for(vocabulary_id, system, first["code"],
                                 first.get("display") or (codeable or {}).get("text"), domain_hint)

    def _standard(self, vocabulary_id: str, code) -> ConceptMatch | None:
        """The node's standard concept for a code, ``None`` when it has none."""
        known = self.vocabulary.lookup(vocabulary_id, str(code).strip())
        return known if known is not None and known.concept_id != 0 and not is_unmapped(known) else None

    def _concept_for(self, vocabulary_id: str, system, code, name: str | None, domain_hint: str | None) -> ConceptMatch:
        """The concept of the first coding when no coding has a standard one (created if need be)."""
        match = self.vocabulary.concept_for(vocabulary_id, str(code)[:50], name, domain_hint, system_uri=system)
        if is_unmapped(match):
            self.unmapped_codings += 1
        return match

    def known_concept(self, vocabulary_id: str, code: str) -> int | None:
        match = self.vocabulary.lookup(vocabulary_id, code)
        return match.concept_id if match is not None and match.concept_id else None

    def unit(self, quantity: dict | None) -> ConceptMatch:
        """:meth:`concept` of the one coding ``{system (UCUM), code, display: unit}``, without building it."""
        if not quantity or not (code := quantity.get("code")):
            return NO_CONCEPT
        system = quantity.get("system") or UCUM
        vocabulary_id = vocabulary_for_uri(system)
        return self._standard(vocabulary_id, code) or self._concept_for(vocabulary_id, system, code,
                                                                       quantity.get("unit") or None, "Unit")
