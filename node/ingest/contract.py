"""The contract between the FHIR ingest engine and the per-resource mappers.

A **mapper** is a plain function ``map_x(resource: dict, ctx: MapContext) -> list[Row]``: it reads one
FHIR R4 resource (a dict, already validated with fhir.resources by the engine) and returns the CDM rows
it produces.  It never touches the database; everything it needs from the node (person ids, concepts,
references to other resources) comes from ``ctx``.  The engine owns reading files, validation,
quarantine, idempotency (``source_record``), batching and the summary.

Which mapper maps which resource type is one table, :data:`node.ingest.mappers.MAPPERS`.  A resource
a mapper cannot map raises :class:`Unmappable` with a stable reason code; the engine quarantines it
with the file and line and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Protocol

from cdm.errors import RadfedError
from cdm.vocabulary import ConceptMatch


@dataclass
class Row:
    """One CDM row: the table name and its column values (the primary key included)."""

    table: str
    values: dict = field(default_factory=dict)


class Unmappable(RadfedError):
    """A resource that cannot become CDM rows: ``code`` is stable (e.g. ``UNKNOWN_PATIENT``)."""

    def __init__(self, code: str, reason: str):
        self.code, self.reason = code, reason
        super().__init__(f"{code}: {reason}")


class MapContext(Protocol):
    """What a mapper may ask of the ingest run."""

    #: node.toml ``[fhir] mrn_system`` (default ``node.fhir_profile.DEFAULT_MRN_SYSTEM``).
    mrn_system: str

    def row_id(self, resource_type: str, resource_id: str, *part: object) -> int:
        """``cdm.ids.stable_id("fhir", resource_type, resource_id, *part)``."""

    def person_id(self, reference: str | None) -> int:
        """The person_id of a ``Patient/<id>`` (or ``urn:uuid:`` Bundle) reference.

        Raises :class:`Unmappable` ``UNKNOWN_PATIENT`` when the patient has not been loaded in this
        run or any earlier one.
        """

    def reference_id(self, reference: str | None, cdm_table: str) -> int | None:
        """The id of the ``cdm_table`` row an (Encounter/Specimen/Procedure/Device/Practitioner/...)
        reference points to, or ``None`` when absent or not (yet) loaded: references are optional."""

    def concept(self, codeable: dict | None, domain_hint: str | None = None) -> ConceptMatch:
        """Map a CodeableConcept (its first coding the node knows, else its first coding, creating a
        site-local concept).  An absent or empty concept is ``ConceptMatch(0, 0, None, False)``.  Every
        coding that maps to no standard concept is counted for ``radfed-node mapping-report``."""

    def unit(self, quantity: dict | None) -> ConceptMatch:
        """The UCUM unit concept of a Quantity (``code`` with system http://unitsofmeasure.org)."""

    def known_concept(self, vocabulary_id: str, code: str) -> int | None:
        """The standard concept the node's vocabulary has for (vocabulary, code), or ``None``; never
        creates one (e.g. an OMOP Genomic variant concept, present only after an Athena load)."""


Mapper = Callable[[dict, MapContext], list[Row]]
