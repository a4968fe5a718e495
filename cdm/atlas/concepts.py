"""Concept sets resolved at one node: Circe's codeset semantics over the node's own vocabulary.

An item names a concept by (vocabulary, code); at this node it is the ``concept`` row with that
``vocabulary_id`` and ``concept_code`` (standard or not: Circe matches the concept as listed), plus
its descendants (``concept_ancestor``) when ``descendants``, plus the source concepts that
``Maps to`` them when ``mapped``.  The set is the included concepts minus the excluded ones
(each expanded the same way).  A code this node does not know matches nothing here and is reported
(``unresolved``: the node's ``UNKNOWN_CODE`` warnings).
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from cdm.atlas.model import AtlasCohort, Concept, ConceptItem
from cdm.schema import tables
from cdm.vocabulary import _Borrowed

T = tables


class ConceptSets:
    """Concept ids per concept set id (and per single concept), resolved once per query."""

    def __init__(self, bind, cohort: AtlasCohort, unresolved: list[str]):
        self._bind = bind
        self._sets = {cs.id: cs for cs in cohort.concept_sets}
        self._ids: dict[int, list[int]] = {}
        self._concepts: dict[tuple[str, str], int | None] = {}
        self.unresolved = unresolved

    def _connection(self):
        return _Borrowed(self._bind) if isinstance(self._bind, Connection) else self._bind.connect()

    def concept_id(self, concept: Concept) -> int | None:
        key = (concept.vocabulary, concept.concept_code)
        if key not in self._concepts:
            c = T["concept"]
            with self._connection() as conn:
                self._concepts[key] = conn.execute(select(c.c.concept_id).where(
                    c.c.vocabulary_id == concept.vocabulary, c.c.concept_code == concept.concept_code)
                    .order_by(c.c.concept_id).limit(1)).scalar()
            if self._concepts[key] is None:
                self.unresolved.append(concept.reference)
        return self._concepts[key]

    def concepts(self, concepts) -> list[int]:
        """Ids of a plain concept list (value concepts, units, genders): no descendants."""
        return sorted({i for i in (self.concept_id(c) for c in concepts or []) if i is not None})

    def _expand(self, items: list[ConceptItem]) -> set[int]:
        found: set[int] = set()
        ancestor, relationship = T["concept_ancestor"], T["concept_relationship"]
        with self._connection() as conn:
            for item in items:
                cid = self.concept_id(item)
                if cid is None:
                    continue
                ids = {cid}
                if item.descendants:
                    ids |= set(conn.execute(select(ancestor.c.descendant_concept_id)
                                            .where(ancestor.c.ancestor_concept_id == cid)).scalars())
                if item.mapped:
                    ids |= set(conn.execute(select(relationship.c.concept_id_1).where(
                        relationship.c.concept_id_2.in_(sorted(ids)), relationship.c.relationship_id == "Maps to",
                        relationship.c.invalid_reason.is_(None))).scalars())
                found |= ids
        return found

    def ids(self, codeset: int) -> list[int]:
        """The concept ids of concept set ``codeset`` at this node (empty if it has none of them)."""
        if codeset not in self._ids:
            cs = self._sets.get(codeset)
            items = cs.items if cs is not None else []
            included = self._expand([i for i in items if not i.excluded])
            excluded = self._expand([i for i in items if i.excluded])
            self._ids[codeset] = sorted(included - excluded)
        return self._ids[codeset]
