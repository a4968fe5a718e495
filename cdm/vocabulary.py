"""The vocabulary layer: ``SYSTEM:code`` references, Athena CSVs, and site-local concepts.

Queries name codes as ``SYSTEM:code`` (``LOINC:2160-0``, ``SNOMED:443487006``, ``HGNC:11998``)
or, for a local code system, by its URI in FHIR's token form ``system|code``
(``http://hospital.example/codes|K-12``) or by an alias the spec (or the network) declares for that
URI (``code_systems: {HOSPLAB: "http://hospital.example/codes"}``, then ``HOSPLAB:K-12``).  FHIR
names codes by system URI.  All resolve through the node's own ``concept`` table, in this order:

1. a standard concept with that (vocabulary_id, concept_code); a non-standard one's ``Maps to``
   relationship gives the standard concept (OMOP convention);
2. the site's ``source_to_concept_map`` (how a site maps its local lab codes onto LOINC, say) —
   also for a code that already has a site-local concept, so a mapping loaded *after* the first
   ingest takes effect (and :func:`load_source_to_concept_map` re-maps the rows already loaded);
3. otherwise, at ingest only, a **site-local concept** is created: ``concept_id`` >= 2,000,000,000
   (OMOP's range for local concepts), keeping vocabulary and code, so the source value survives
   and ``radfed-node mapping-report`` can list it.  Its id is derived from (vocabulary, code), so a
   rebuilt node gives the same code the same id.

A local code system's URI cannot be a vocabulary_id (20 characters at most): it is stored under a
short name derived from the URI, with the URI itself in ``vocabulary.vocabulary_reference``; that
derived name is internal — reports show the URI (:func:`display_reference`), specs use the URI or
an alias.

Project concepts for radfed's extensions (image features, ctDNA, habitats; vocabulary ``RADFED``)
live in ``cdm/data/radfed_concepts.csv`` in the reserved range 2,000,000,000-2,000,099,999 and are
written by :func:`install_core_concepts` when a CDM is initialised.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, or_, select, update

from cdm.conformance import DYNAMICS_STANDARD
from cdm.errors import BadInput
from cdm.locks import xact_lock
from cdm.omop_csv import CsvFormatError, open_table, parse_value, table_files
from cdm.schema import tables

LOCAL_CONCEPT_MIN = 2_000_000_000
PROJECT_CONCEPT_MAX = 2_000_099_999
#: Site-local concepts (created at ingest for codes the node has no concept for) start here.
SITE_LOCAL_MIN = 2_000_100_000
_LOCAL_HASH_BASE = SITE_LOCAL_MIN
_LOCAL_HASH_SPAN = 2_147_483_647 - _LOCAL_HASH_BASE
#: Transaction advisory lock under which site-local concepts are created (:mod:`cdm.locks`).
LOCAL_CONCEPTS = "vocabulary: site-local concepts"


@dataclass(frozen=True)
class CodedColumn:
    """A CDM column the ingest fills from a source coding: its role, and where the code itself is
    kept (the source concept column; without one, the concept column names a site-local concept)."""

    table: str
    column: str
    role: str
    source_column: str | None = None
    source_value: str | None = None
    #: (column, value) a row must *not* have to count (episode rows copied from their Condition)
    unless: tuple[str, int] | None = None
    #: a column that is NULL on rows copying another row's codes (an image feature's MI-CDM
    #: measurement has no source concept): such rows are not counted a second time
    copied_unless: str | None = None


def _event(table: str, prefix: str) -> CodedColumn:
    return CodedColumn(table, f"{prefix}_concept_id", "concept", f"{prefix}_source_concept_id", f"{prefix}_source_value")


#: Every column the FHIR ingest fills from a coding, by role: what ``mapping-report`` counts and what a
#: late ``source_to_concept_map`` re-maps.
CODED_COLUMNS = (
    _event("condition_occurrence", "condition"), _event("procedure_occurrence", "procedure"),
    _event("drug_exposure", "drug"), _event("device_exposure", "device"),
    _event("measurement", "measurement"), _event("observation", "observation"),
    CodedColumn("specimen", "specimen_concept_id", "concept", source_value="specimen_source_value"),
    CodedColumn("image_feature", "image_feature_concept_id", "concept", source_value="image_feature_source_value"),
    CodedColumn("signal_window", "signal_concept_id", "concept", source_value="signal_source_value"),
    CodedColumn("variant_occurrence", "target_gene1_concept_id", "concept", source_value="target_gene1_symbol"),
    CodedColumn("variant_occurrence", "target_gene2_concept_id", "concept", source_value="target_gene2_symbol"),
    CodedColumn("episode", "episode_object_concept_id", "concept", unless=("episode_concept_id", 32533)),
    CodedColumn("image_occurrence", "modality_concept_id", "concept", source_value="modality_source_value"),
    CodedColumn("note", "note_class_concept_id", "note type", source_value="note_source_value"),
    CodedColumn("visit_occurrence", "visit_source_concept_id", "visit type", source_value="visit_source_value"),
    CodedColumn("visit_detail", "visit_detail_source_concept_id", "visit type",
                source_value="visit_detail_source_value"),
    CodedColumn("visit_occurrence", "admitted_from_concept_id", "admission", source_value="admitted_from_source_value"),
    CodedColumn("visit_occurrence", "discharged_to_concept_id", "admission", source_value="discharged_to_source_value"),
    CodedColumn("measurement", "value_as_concept_id", "value", source_value="value_source_value",
                copied_unless="measurement_source_concept_id"),
    CodedColumn("observation", "value_as_concept_id", "value", source_value="value_source_value"),
    CodedColumn("image_feature", "value_as_concept_id", "value"),
    CodedColumn("variant_annotation", "value_as_concept_id", "value"),
    CodedColumn("biopsy_location", "habitat_concept_id", "value", source_value="habitat_label"),
    CodedColumn("measurement", "unit_concept_id", "unit", source_value="unit_source_value",
                copied_unless="measurement_source_concept_id"),
    CodedColumn("observation", "unit_concept_id", "unit", source_value="unit_source_value"),
    CodedColumn("specimen", "unit_concept_id", "unit", source_value="unit_source_value"),
    CodedColumn("image_feature", "unit_concept_id", "unit", source_value="unit_source_value"),
    CodedColumn("signal_window", "unit_concept_id", "unit", source_value="unit_source_value"),
    CodedColumn("drug_exposure", "route_concept_id", "route", source_value="route_source_value"),
    CodedColumn("specimen", "anatomic_site_concept_id", "anatomic site", source_value="anatomic_site_source_value"),
    CodedColumn("image_occurrence", "anatomic_site_concept_id", "anatomic site",
                source_value="anatomic_site_source_value"),
    CodedColumn("image_feature", "anatomic_site_concept_id", "anatomic site"),
)
#: Columns queries match that no source coding fills (radfed or the site's ETL chooses the concept: a
#: disease episode, a disease dynamic): counted by :meth:`Vocabulary.usage`, never as unmapped.
QUERIED_COLUMNS = (CodedColumn("episode", "episode_concept_id", "concept"),)
#: The CDM table of each event domain (where a concept of that domain's rows belong).
DOMAIN_TABLES = {"Condition": "condition_occurrence", "Procedure": "procedure_occurrence", "Drug": "drug_exposure",
                 "Device": "device_exposure", "Measurement": "measurement", "Observation": "observation"}


def unmapped_clause(table, coded: CodedColumn):
    """Rows of ``table`` whose ``coded`` column holds no standard concept for a code that was sent: the
    code's own site-local concept (no mapping was found for it), or 0 for a code known here without a
    standard one.  A site-local concept that a site mapping targets counts as mapped."""
    column = table.c[coded.column]
    if coded.source_column:
        source = table.c[coded.source_column]
        clause = or_(and_(column >= SITE_LOCAL_MIN, column == source), and_(column == 0, source != 0))
    else:
        stcm = tables["source_to_concept_map"]
        clause = and_(column >= SITE_LOCAL_MIN, column.notin_(select(stcm.c.target_concept_id)))
    if coded.unless:
        clause = and_(clause, table.c[coded.unless[0]] != coded.unless[1])
    if coded.copied_unless:
        clause = and_(clause, table.c[coded.copied_unless].isnot(None))
    return clause

#: Query-spec system names -> OMOP vocabulary_id.
SYSTEM_ALIASES = {
    "LOINC": "LOINC",
    "SNOMED": "SNOMED",
    "SCT": "SNOMED",
    "RXNORM": "RxNorm",
    "ICD10CM": "ICD10CM",
    "ICD10": "ICD10",
    "ICDO3": "ICDO3",
    "HGNC": "HGNC",
    "DICOM": "DICOM",
    "UCUM": "UCUM",
    "CVX": "CVX",
    "NCIT": "NCIt",
    "ONCOTREE": "OncoTree",
    "HPO": "HPO",
    "ORPHA": "OrphaNet",
    "RADFED": "RADFED",
}

#: FHIR code system URIs -> OMOP vocabulary_id.
SYSTEM_URIS = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://terminology.hl7.org/CodeSystem/icd-o-3": "ICDO3",
    "http://www.genenames.org/geneId": "HGNC",
    "http://www.genenames.org": "HGNC",
    "http://dicom.nema.org/resources/ontology/DCM": "DICOM",
    "http://unitsofmeasure.org": "UCUM",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl": "NCIt",
    "http://human-phenotype-ontology.org": "HPO",
    "http://www.orpha.net": "OrphaNet",
    "https://radfed.org/fhir/CodeSystem/radfed": "RADFED",
}

_KNOWN_VOCABULARIES = frozenset(SYSTEM_ALIASES.values()) | frozenset(SYSTEM_URIS.values())
_SYSTEM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,19}$")
#: A code system URI (http(s)://..., urn:oid:..., urn:uuid:...): printable, no spaces or "|", at most 255.
_SYSTEM_URI = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://|[Uu][Rr][Nn]:)[!-{}~]{1,245}$")


class UnknownCode(BadInput, LookupError):
    """A ``SYSTEM:code`` reference that is malformed or that this node's vocabulary cannot resolve."""


@dataclass(frozen=True)
class ConceptMatch:
    """How a source code maps: the standard concept events are filed under, and the source concept."""

    concept_id: int
    source_concept_id: int
    domain_id: str | None
    is_local: bool


def parse_reference(reference: str) -> tuple[str, str]:
    """Split ``SYSTEM:code`` or ``system-uri|code`` into (OMOP vocabulary_id, code).

    Known system names are case-insensitive aliases (``SNOMED``, ``SCT``); any other well-formed name
    is taken as a site vocabulary (``LOCALLAB:NA-1``).  A system URI (FHIR token form) names the
    vocabulary the FHIR ingest files that system's codes under (:func:`vocabulary_for_uri`).
    ``HGNC:HGNC:11998`` and ``HGNC:11998`` are the same gene.
    """
    if isinstance(reference, str) and "|" in reference and _SYSTEM_URI.match(reference.split("|", 1)[0]):
        system, code = reference.split("|", 1)
        if not code.strip() or len(code) > 50:
            raise UnknownCode(f"code reference {reference!r} is not of the form system-uri|code")
        vocabulary_id = vocabulary_for_uri(system)
        return vocabulary_id, normalise_code(vocabulary_id, code)
    if not isinstance(reference, str) or ":" not in reference:
        raise UnknownCode(f"code reference {reference!r} is not of the form SYSTEM:code")
    system, code = reference.split(":", 1)
    if not _SYSTEM_NAME.match(system) or not code or len(code) > 50:
        raise UnknownCode(f"code reference {reference!r} is not of the form SYSTEM:code")
    vocabulary_id = SYSTEM_ALIASES.get(system.upper(), system)
    return vocabulary_id, normalise_code(vocabulary_id, code)


def is_system_uri(value: object) -> bool:
    """True for a code system URI as FHIR writes ``Coding.system`` (``http://...``, ``urn:oid:...``)."""
    return isinstance(value, str) and _SYSTEM_URI.match(value) is not None


def normalise_code(vocabulary_id: str, code: str) -> str:
    """The code as the vocabulary stores it (HGNC gene ids without their ``HGNC:`` prefix)."""
    code = code.strip()
    if vocabulary_id == "HGNC" and code.upper().startswith("HGNC:"):
        return code[5:]
    return code


def vocabulary_for_uri(system_uri: str | None) -> str:
    """The OMOP vocabulary_id for a FHIR ``Coding.system``.

    An unknown URI becomes a site vocabulary named by a short hash of it (vocabulary_id is at most
    20 characters), so every code system a site sends stays distinguishable.
    """
    # The ingest asks this for every coding it reads, of a handful of systems: answered from a memo
    # (bounded: a site sending ever new URIs still gets the right answer, computed again).
    try:
        return _VOCABULARY_OF_URI[system_uri]
    except (KeyError, TypeError):  # not met yet, or not a string (the rule below says what it is)
        pass
    found = _vocabulary_for_uri(system_uri)
    if (system_uri is None or system_uri.__class__ is str) and len(_VOCABULARY_OF_URI) < 1024:
        _VOCABULARY_OF_URI[system_uri] = found
    return found


_VOCABULARY_OF_URI: dict[str, str] = {}


def _vocabulary_for_uri(system_uri: str | None) -> str:
    if not system_uri:
        return "NoSystem"
    known = SYSTEM_URIS.get(system_uri.rstrip("/"))
    if known:
        return known
    if system_uri.startswith("urn:oid:2.16.840.1.113883.6.1"):
        return "LOINC"
    return "L" + hashlib.blake2b(system_uri.encode(), digest_size=6).hexdigest()


def display_reference(vocabulary_id: str | None, code: str | None, system_uri: str | None = None) -> str:
    """How a code is shown to people and written in specs: ``LOINC:2160-0`` for a known vocabulary,
    ``http://hospital.example/codes|K-12`` for a local code system (never its internal short name)."""
    if system_uri and vocabulary_id not in _KNOWN_VOCABULARIES:
        return f"{system_uri}|{code or '?'}"
    name = next((a for a, v in SYSTEM_ALIASES.items() if v == vocabulary_id), vocabulary_id or "?")
    return f"{name}:{code or '?'}"


def local_concept_id(vocabulary_id: str, code: str, taken=frozenset()) -> int:
    """The site-local concept id for (vocabulary, code): hashed into the local range, probing past ``taken``."""
    digest = int.from_bytes(hashlib.blake2b(f"{vocabulary_id}\x1f{code}".encode(), digest_size=8).digest(), "big")
    candidate = _LOCAL_HASH_BASE + digest % _LOCAL_HASH_SPAN
    while candidate in taken:
        candidate = _LOCAL_HASH_BASE + (candidate - _LOCAL_HASH_BASE + 1) % _LOCAL_HASH_SPAN
    return candidate


def _lookup_statements():
    """The statements of :meth:`Vocabulary.lookup`, built once with bound parameters: building one
    cost SQLAlchemy more than running it (~80 against ~27 us on SQLite), for every code an ingest
    meets the first time."""
    concept, relationship = tables["concept"], tables["concept_relationship"]
    stcm = tables["source_to_concept_map"]
    concept_of_code = select(concept.c.concept_id, concept.c.standard_concept, concept.c.domain_id).where(
        concept.c.vocabulary_id == bindparam("vocabulary_id"), concept.c.concept_code == bindparam("code"))
    maps_to = (select(relationship.c.concept_id_2, concept.c.domain_id)
               .join(concept, concept.c.concept_id == relationship.c.concept_id_2)
               .where(relationship.c.concept_id_1 == bindparam("concept_id"),
                      relationship.c.relationship_id == "Maps to", relationship.c.invalid_reason.is_(None)))
    site_mapping = (select(stcm.c.target_concept_id, stcm.c.source_concept_id, concept.c.domain_id)
                    .outerjoin(concept, concept.c.concept_id == stcm.c.target_concept_id)
                    .where(stcm.c.source_vocabulary_id == bindparam("vocabulary_id"),
                           stcm.c.source_code == bindparam("code")))
    return concept_of_code, maps_to, site_mapping


_CONCEPT_OF_CODE, _MAPS_TO, _SITE_MAPPING = _lookup_statements()
_UNSEEN = object()


class Vocabulary:
    """Concept resolution against one CDM, with an in-memory cache for ingest throughput.

    Use one instance per ingest run or query; it reads the concept tables lazily and remembers
    every answer.  :meth:`concept_for` may create site-local concepts (ingest); :meth:`resolve`
    never writes (queries).
    """

    def __init__(self, engine: Engine | Connection):
        self._bind = engine
        self._cache: dict[tuple[str, str], ConceptMatch | None] = {}
        self._vocabularies: set[str] | None = None
        self._names: dict[int, str] = {}  # site-local concept id -> its name in the CDM (as far as known)

    # -- reading ---------------------------------------------------------------------------------

    def _connection(self):
        if isinstance(self._bind, Connection):
            return _Borrowed(self._bind)
        return self._bind.connect()

    def lookup(self, vocabulary_id: str, code: str) -> ConceptMatch | None:
        """The mapping of (vocabulary, code) if the node's vocabulary knows it, else ``None``."""
        key = (vocabulary_id, code)
        found = self._cache.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found
        with self._connection() as conn:
            match = self._lookup_in(conn, vocabulary_id, code)
        self._cache[key] = match
        return match

    @staticmethod
    def _lookup_in(conn: Connection, vocabulary_id: str, code: str) -> ConceptMatch | None:
        """:meth:`lookup` through ``conn``, without the cache."""
        code_of = {"vocabulary_id": vocabulary_id, "code": code}
        row = conn.execute(_CONCEPT_OF_CODE, code_of).first()
        if row is not None and row[1] == "S":
            match = ConceptMatch(row[0], row[0], row[2], row[0] >= LOCAL_CONCEPT_MIN)
        else:
            mapped = None
            if row is not None:
                mapped = conn.execute(_MAPS_TO, {"concept_id": row[0]}).first()
            if mapped is not None:
                match = ConceptMatch(mapped[0], row[0], mapped[1], row[0] >= LOCAL_CONCEPT_MIN)
            else:
                # The site's own mapping wins over a concept the ingest made for the code before
                # the mapping was loaded (the site-local concept stays its source concept).
                site = conn.execute(_SITE_MAPPING, code_of).first()
                if site is not None:
                    match = ConceptMatch(site[0], row[0] if row is not None else site[1] or 0, site[2], False)
                elif row is not None:
                    source_id = row[0]
                    match = ConceptMatch(source_id if source_id >= LOCAL_CONCEPT_MIN else 0, source_id, row[2],
                                         source_id >= LOCAL_CONCEPT_MIN)
                else:
                    match = None
        return match

    def resolve(self, reference: str) -> int | None:
        """The concept id a ``SYSTEM:code`` reference denotes at this node, ``None`` if it has never been seen.

        Raises :class:`UnknownCode` for a malformed reference.  ``None`` is not an error: a code a
        site has no data for matches no rows there.
        """
        match = self.lookup(*parse_reference(reference))
        return None if match is None else match.concept_id

    def usage(self, concept_id: int) -> dict[str, int]:
        """Rows per CDM table that carry ``concept_id`` in a coded column (concept or source concept):
        what lets a site administrator tell "known here, 0 rows" from "unknown code"."""
        counts: dict[str, int] = {}
        with self._connection() as conn:
            for coded in CODED_COLUMNS + QUERIED_COLUMNS:
                table = tables[coded.table]
                columns = [table.c[coded.column]] + ([table.c[coded.source_column]] if coded.source_column else [])
                n = conn.execute(select(func.count()).select_from(table)
                                 .where(or_(*(c == concept_id for c in columns)))).scalar_one()
                if n:
                    counts[coded.table] = counts.get(coded.table, 0) + n
        return counts

    def describe(self, reference: str) -> tuple[int | None, str]:
        """(concept id, what this node has of it): ``N in <table>``, ``code known here, 0 rows`` or
        ``unknown code: ...`` — the site administrator's view (never part of a release)."""
        concept_id = self.resolve(reference)
        if concept_id is None:
            return None, "unknown code: not in this node's vocabulary"
        rows = self.usage(concept_id)
        for standard in standard_equivalents(concept_id):  # what a query naming it also matches
            for table, n in self.usage(standard).items():
                rows[table] = rows.get(table, 0) + n
        return concept_id, ", ".join(f"{n:,} in {table}" for table, n in rows.items()) if rows else "code known here, 0 rows"

    def descendants(self, concept_id: int) -> set[int]:
        """``concept_id`` and its descendants (from Athena's CONCEPT_ANCESTOR where loaded)."""
        ancestor = tables["concept_ancestor"]
        with self._connection() as conn:
            found = conn.execute(
                select(ancestor.c.descendant_concept_id).where(ancestor.c.ancestor_concept_id == concept_id)
            ).scalars()
            return {concept_id, *found}

    # -- writing (ingest) ------------------------------------------------------------------------

    def concept_for(
        self,
        vocabulary_id: str,
        code: str,
        name: str | None = None,
        domain_id: str | None = None,
        conn: Connection | None = None,
        system_uri: str | None = None,
    ) -> ConceptMatch:
        """The mapping of a source code, creating a site-local concept when the node has none.

        ``conn`` is the ingest transaction to write the new concept in (the engine otherwise);
        ``system_uri`` the FHIR code system it came from (kept as the vocabulary's reference).
        A site-local concept is named by the smallest ``name`` any call gave its code (a real name
        before the ``VOCABULARY code`` stand-in), so its name does not depend on which file or which
        of several concurrent ingest processes met the code first.
        """
        code = normalise_code(vocabulary_id, code)
        stand_in = f"{vocabulary_id} {code}"[:255]
        found = self.lookup(vocabulary_id, code)
        if found is None:
            found = self._create(vocabulary_id, code, (name or stand_in)[:255], domain_id, conn, system_uri)
        if name and found.concept_id >= SITE_LOCAL_MIN and found.concept_id == found.source_concept_id:
            self._prefer_name(found.concept_id, name[:255], stand_in, conn)
        return found

    def _prefer_name(self, concept_id: int, name: str, stand_in: str, conn: Connection | None) -> None:
        """Rename a site-local concept to ``name`` if that comes first (see :meth:`concept_for`)."""
        def rank(value: str) -> tuple[bool, str]:
            return value == stand_in, value

        known = self._names.get(concept_id)
        if known is not None and rank(known) <= rank(name):
            return
        concept = tables["concept"]
        with _Borrowed(conn) if conn is not None else self._begin() as c:
            # read and write under the row's lock: another process may rename it at the same time
            stored = c.execute(select(concept.c.concept_name).where(concept.c.concept_id == concept_id)
                               .with_for_update()).scalar()
            if stored is not None and rank(name) < rank(stored):
                c.execute(update(concept).where(concept.c.concept_id == concept_id).values(concept_name=name))
                stored = name
        self._names[concept_id] = stored

    def _create(self, vocabulary_id: str, code: str, name: str, domain_id: str | None, conn: Connection | None,
                system_uri: str | None) -> ConceptMatch:
        """A new site-local concept for (vocabulary, code), or the one another process created meanwhile."""
        concept = tables["concept"]
        writer = _Borrowed(conn) if conn is not None else self._begin()
        with writer as c:
            # Several ingest processes may meet the same new code at once (PostgreSQL): creating a
            # local concept is atomic under one transaction lock, and the code is looked up again
            # inside it (another process may have created it since this one looked).
            xact_lock(c, LOCAL_CONCEPTS)
            if c.dialect.name == "postgresql" and (found := self._lookup_in(c, vocabulary_id, code)) is not None:
                self._cache[(vocabulary_id, code)] = found
                return found
            self._ensure_vocabulary(c, vocabulary_id, system_uri)
            taken = set(
                c.execute(select(concept.c.concept_id).where(concept.c.concept_id >= _LOCAL_HASH_BASE)).scalars()
            ) if self._collides(c, vocabulary_id, code) else frozenset()
            concept_id = local_concept_id(vocabulary_id, code, taken)
            c.execute(
                insert(concept).values(
                    concept_id=concept_id,
                    concept_name=name,
                    domain_id=(domain_id or "Observation")[:20],
                    vocabulary_id=vocabulary_id[:20],
                    concept_class_id="Undefined",
                    standard_concept=None,
                    concept_code=code[:50],
                    valid_start_date=dt.date(1970, 1, 1),
                    valid_end_date=dt.date(2099, 12, 31),
                )
            )
        match = ConceptMatch(concept_id, concept_id, domain_id, True)
        self._cache[(vocabulary_id, code)] = match
        self._names[concept_id] = name
        return match

    def _begin(self):
        if isinstance(self._bind, Connection):
            return _Borrowed(self._bind)
        return self._bind.begin()

    def _collides(self, conn: Connection, vocabulary_id: str, code: str) -> bool:
        concept = tables["concept"]
        candidate = local_concept_id(vocabulary_id, code)
        return conn.execute(select(concept.c.concept_id).where(concept.c.concept_id == candidate)).first() is not None

    def _ensure_vocabulary(self, conn: Connection, vocabulary_id: str, system_uri: str | None = None) -> None:
        vocabulary = tables["vocabulary"]
        if self._vocabularies is None or vocabulary_id not in self._vocabularies:  # (again: another process's)
            self._vocabularies = set(conn.execute(select(vocabulary.c.vocabulary_id)).scalars())
        if vocabulary_id not in self._vocabularies:
            conn.execute(
                insert(vocabulary).values(
                    vocabulary_id=vocabulary_id[:20],
                    vocabulary_name=f"{system_uri or vocabulary_id} (site-local concepts)"[:255],
                    vocabulary_reference=system_uri[:255] if system_uri else None,
                    vocabulary_concept_id=0,
                )
            )
            self._vocabularies.add(vocabulary_id)


class _Borrowed:
    """A context manager over a connection someone else owns (no commit, no close)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> Connection:
        return self.conn

    def __exit__(self, *exc) -> None:
        return None


# -- shipped concepts ------------------------------------------------------------------------------


def _packaged_rows(filename: str) -> list[dict]:
    with resources.files("cdm.data").joinpath(filename).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@cache
def project_concepts() -> tuple[dict, ...]:
    """The RADFED project concepts (``cdm/data/radfed_concepts.csv``: fixed ids in the reserved range)."""
    return tuple(_packaged_rows("radfed_concepts.csv"))


@cache
def _dynamics_equivalents() -> dict[int, tuple[int, ...]]:
    ids = {r["concept_code"]: int(r["concept_id"]) for r in project_concepts()}
    return {ids[code]: standard for code, standard in DYNAMICS_STANDARD.items()}


def standard_equivalents(concept_id: int) -> tuple[int, ...]:
    """The standard concepts a RADFED disease-dynamics concept also matches in a query (else none):
    ``RADFED:progression`` finds Progression 32949 episodes too (:mod:`cdm.conformance`)."""
    return _dynamics_equivalents().get(concept_id, ())


def install_core_concepts(engine: Engine) -> int:
    """Write the OMOP core concepts radfed's ingest relies on and the RADFED project concepts.

    Idempotent (rows already present are left as they are).  Returns the number written.
    """
    concept, vocabulary = tables["concept"], tables["vocabulary"]
    rows = _packaged_rows("omop_core_concepts.csv") + list(project_concepts())
    with engine.begin() as conn:
        present = set(conn.execute(select(concept.c.concept_id)).scalars())
        new = [
            {
                "concept_id": int(r["concept_id"]),
                "concept_name": r["concept_name"],
                "domain_id": r["domain_id"],
                "vocabulary_id": r["vocabulary_id"],
                "concept_class_id": r["concept_class_id"],
                "standard_concept": r["standard_concept"] or None,
                "concept_code": r["concept_code"],
                "valid_start_date": dt.date(1970, 1, 1),
                "valid_end_date": dt.date(2099, 12, 31),
            }
            for r in rows
            if int(r["concept_id"]) not in present
        ]
        if new:
            conn.execute(insert(concept), new)
        known = set(conn.execute(select(vocabulary.c.vocabulary_id)).scalars())
        for vocab_id in sorted({r["vocabulary_id"] for r in rows} - known):
            conn.execute(
                insert(vocabulary).values(
                    vocabulary_id=vocab_id,
                    vocabulary_name="radfed project concepts" if vocab_id == "RADFED" else vocab_id,
                    vocabulary_concept_id=0,
                )
            )
    return len(new)


# -- Athena ----------------------------------------------------------------------------------------

#: Athena file name -> CDM table.  Loaded in this order (file names match in any case).
ATHENA_FILES = {
    "VOCABULARY.csv": "vocabulary",
    "DOMAIN.csv": "domain",
    "CONCEPT_CLASS.csv": "concept_class",
    "RELATIONSHIP.csv": "relationship",
    "CONCEPT.csv": "concept",
    "CONCEPT_RELATIONSHIP.csv": "concept_relationship",
    "CONCEPT_ANCESTOR.csv": "concept_ancestor",
    "CONCEPT_SYNONYM.csv": "concept_synonym",
    "DRUG_STRENGTH.csv": "drug_strength",
}
_BATCH = 20_000


class AthenaError(BadInput, ValueError):
    """An Athena vocabulary folder that cannot be loaded as it is."""


def load_athena(engine: Engine, folder: str | Path, progress=None) -> dict[str, int]:
    """Load an Athena vocabulary download into the CDM's vocabulary tables.

    Athena writes tab-separated files without quoting; the same tables exported from an OMOP CDM
    (Eunomia, an ETL) are often comma-separated and quoted: the delimiter is detected per file
    (:mod:`cdm.omop_csv`).  Rows go in batches of 20,000 through one multi-row INSERT each
    (SQLAlchemy's insertmanyvalues), inside one transaction per file, replacing that table's Athena
    content but keeping site-local and project concepts.  Returns rows loaded per table.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AthenaError(f"Athena folder {str(folder)!r} does not exist")
    files, _others = table_files(folder, ATHENA_FILES.values())
    if "concept" not in files:
        raise AthenaError(f"{str(folder)!r} has no CONCEPT.csv: not an Athena vocabulary download")
    csv.field_size_limit(10_000_000)
    loaded = {}
    for table_name in ATHENA_FILES.values():
        if table_name not in files:
            continue
        table, file = tables[table_name], files[table_name]
        try:
            reader = open_table(file, table.c.keys())
        except CsvFormatError as exc:
            raise AthenaError(str(exc)) from None
        with engine.begin() as conn, closing(reader):
            unknown = [h for h in reader.header if h not in table.c]
            if unknown:
                raise AthenaError(f"{file.name} (read as {reader.dialect.name}): columns {unknown} "
                                  f"are not in OMOP table {table.name}")
            missing = [c.name for c in table.columns if not c.nullable and c.name not in reader.header]
            if missing:
                raise AthenaError(f"{file.name} (read as {reader.dialect.name}): required column(s) {missing} "
                                  f"of OMOP table {table.name} missing")
            columns = [table.c[h] for h in reader.header]
            if table.name == "concept":
                conn.execute(delete(table).where(table.c.concept_id < LOCAL_CONCEPT_MIN))
            elif table.name != "vocabulary":  # vocabulary: only the rows the file replaces (below)
                conn.execute(delete(table))
            count, batch = 0, []
            try:
                for line_no, record in reader.records():
                    if len(record) != len(columns):
                        raise AthenaError(f"{file.name} line {line_no}: {len(record)} fields, expected {len(columns)}")
                    try:
                        batch.append({c.name: parse_value(c, v) for c, v in zip(columns, record)})
                    except ValueError as exc:
                        raise AthenaError(f"{file.name} line {line_no}: {exc}") from None
                    if len(batch) >= _BATCH:
                        count += _insert_athena(conn, table, batch)
                        batch = []
                        if progress:
                            progress(file.name, count)
            except CsvFormatError as exc:
                raise AthenaError(str(exc)) from None
            if batch:
                count += _insert_athena(conn, table, batch)
        loaded[table.name] = count
    # A partial download (a site's chosen vocabularies) may lack concepts the ingest relies on.
    install_core_concepts(engine)
    return loaded


def _insert_athena(conn: Connection, table, batch: list[dict]) -> int:
    if table.name == "vocabulary":
        conn.execute(delete(table).where(table.c.vocabulary_id.in_([r["vocabulary_id"] for r in batch])))
    conn.execute(insert(table), batch)
    return len(batch)


#: The domain Athena gives (nearly) every concept of these vocabularies; others (SNOMED spans many
#: domains) fall back to OMOP's catch-all, Observation, unless the site's file names one.
USUAL_DOMAIN = {"LOINC": "Measurement", "UCUM": "Unit", "RxNorm": "Drug", "CVX": "Drug",
                "ICDO3": "Condition", "ICD10CM": "Condition", "ICD10": "Condition", "HGNC": "Observation"}


def load_source_to_concept_map(engine: Engine, path: str | Path) -> "MapLoad":
    """Load a site's own code mappings (OMOP SOURCE_TO_CONCEPT_MAP columns, comma- or tab-separated).

    Source codes are ``source_vocabulary_id`` + ``source_code`` (the vocabulary may be a local code
    system's URI), or one ``source`` column holding the code as ``mapping-report`` shows it
    (``http://hospital.example/codes|K-12``).  Target concepts may be named by id
    (``target_concept_id``) or, more conveniently for a site, by reference (a ``target`` column
    holding ``LOINC:2160-0``), resolved through this node.  A
    target the node has no concept for yet (no Athena load) is created site-local with the domain of
    an optional ``target_domain_id`` column, else its vocabulary's usual domain
    (:data:`USUAL_DOMAIN`): its domain decides the CDM table mapped records land in, so a local lab
    code mapped to LOINC must reach ``measurement``, not OMOP's catch-all ``observation``.
    """
    table = tables["source_to_concept_map"]
    vocab = Vocabulary(engine)
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = []
    for line_no, r in enumerate(csv.DictReader(text.splitlines(), dialect=dialect), start=2):
        if r.get("target"):
            target = vocab.resolve(r["target"])
            if target is None:
                vocab_id, code = parse_reference(r["target"])
                domain = r.get("target_domain_id") or USUAL_DOMAIN.get(vocab_id)
                target = vocab.concept_for(vocab_id, code, domain_id=domain).concept_id
        elif r.get("target_concept_id"):
            target = int(r["target_concept_id"])
        else:
            raise AthenaError(f"{path.name} line {line_no}: needs target or target_concept_id")
        if r.get("source"):  # the code as mapping-report shows it: SYSTEM:code or system-uri|code
            source_vocabulary, source_code = parse_reference(r["source"])
        else:
            source_vocabulary, source_code = r["source_vocabulary_id"], r["source_code"]
            if is_system_uri(source_vocabulary):  # a local code system by its URI
                source_vocabulary = vocabulary_for_uri(source_vocabulary)
        rows.append(
            {
                "source_code": source_code,
                "source_concept_id": int(r.get("source_concept_id") or 0),
                "source_vocabulary_id": source_vocabulary,
                "source_code_description": r.get("source_code_description"),
                "target_concept_id": target,
                "target_vocabulary_id": r.get("target_vocabulary_id") or "None",
                "valid_start_date": dt.date(1970, 1, 1),
                "valid_end_date": dt.date(2099, 12, 31),
                "invalid_reason": None,
            }
        )
    with engine.begin() as conn:
        for r in rows:
            conn.execute(
                delete(table).where(
                    and_(table.c.source_vocabulary_id == r["source_vocabulary_id"], table.c.source_code == r["source_code"])
                )
            )
        if rows:
            conn.execute(insert(table), rows)
        remapped = remap_loaded_rows(conn, rows)
    return MapLoad(len(rows), *remapped)


@dataclass(frozen=True)
class MapLoad:
    """What ``vocab load-map`` did: mappings loaded, rows already in the CDM re-mapped in place, and
    rows that belong in another table now (their resources are marked for re-mapping by the next
    ``radfed-node ingest fhir`` of the same files)."""

    mappings: int
    rows_remapped: int = 0
    rows_to_move: int = 0

    def text(self) -> str:
        lines = [f"{self.mappings:,} mappings loaded"]
        if self.rows_remapped:
            lines.append(f"{self.rows_remapped:,} rows already loaded now carry the mapped concepts")
        if self.rows_to_move:
            lines.append(f"{self.rows_to_move:,} rows belong in another table under their new concept's domain: "
                         "run `radfed-node ingest fhir` on the same files again to move them (their resources "
                         "are re-mapped even though unchanged; no --force needed)")
        return "\n".join(lines)


def remap_loaded_rows(conn: Connection, mappings: list[dict]) -> tuple[int, int]:
    """Re-map rows the ingest loaded before these mappings existed: every coded column holding the
    site-local concept of a mapped (vocabulary, code) now holds the mapping's target (the source
    concept column keeps the local concept: the code as sent).  Rows whose table no longer fits the
    target's domain are marked stale in ``source_record`` so the next ingest of their files moves them.
    Returns (rows re-mapped, rows to move)."""
    concept, record = tables["concept"], tables["source_record"]
    targets: dict[int, int] = {}
    for r in mappings:
        local = conn.execute(select(concept.c.concept_id).where(
            concept.c.vocabulary_id == r["source_vocabulary_id"], concept.c.concept_code == r["source_code"],
            concept.c.concept_id >= SITE_LOCAL_MIN)).scalar()
        if local is not None and r["target_concept_id"]:
            targets[local] = r["target_concept_id"]
    if not targets:
        return 0, 0
    domains = dict(conn.execute(select(concept.c.concept_id, concept.c.domain_id)
                                .where(concept.c.concept_id.in_(sorted(set(targets.values()))))).all())
    remapped = moved = 0
    for coded in CODED_COLUMNS:
        if coded.role == "visit type":  # a source concept column: it keeps the code as sent
            continue
        table = tables[coded.table]
        key = next(iter(table.primary_key.columns), None)
        for local, target in targets.items():
            hit = table.c[coded.column] == local
            home = DOMAIN_TABLES.get(domains.get(target) or "")
            if coded.role == "concept" and coded.table in DOMAIN_TABLES.values() and home not in (None, coded.table):
                ids = list(conn.execute(select(key).where(hit)).scalars())
                moved += len(ids)
                for start in range(0, len(ids), 2_000):
                    owners = select(record.c.source_key).where(record.c.cdm_table == coded.table,
                                                               record.c.cdm_id.in_(ids[start:start + 2_000]))
                    # every row of the resource: the engine compares the hash of any of them
                    conn.execute(update(record).where(record.c.source_key.in_(owners))
                                 .values(content_hash="stale: vocab load-map"))
            remapped += conn.execute(update(table).where(hit).values({coded.column: target})).rowcount
    return remapped, moved
