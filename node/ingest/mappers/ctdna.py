"""ctDNA results -> ``ctdna_result`` (+ the ctDNA flag of variants on plasma / cfDNA specimens).

**ctDNA** (:mod:`node.fhir_profile`): a variant whose ``specimen`` is plasma / cell-free DNA
(SNOMED 119361006 or type code ``cfDNA``) has ``is_ctdna`` true.  A mapper sees only the reference, so
it decides from a Specimen it can read (``contained``, or inline in a Bundle result); for a separately
loaded Specimen, :func:`reconcile_ctdna` (run by the ingest after a load) sets ``is_ctdna`` from the
loaded ``specimen`` rows and fills each ``ctdna_result``'s ``max_vaf`` / ``mean_vaf`` from the ctDNA
variants of its draw — set-based SQL, never per row.  RADFED ``ctdna_tumour_fraction`` /
``ctdna_detected`` results become a ``measurement`` each (the general path) and together **one**
``ctdna_result`` row per draw, id ``row_id("Specimen", specimen id, "ctdna")``: each result writes the
column it knows and the ingest's insert-or-fill (:mod:`node.ingest.load`) merges them, so a draw is
one row with both ``tumour_fraction`` and ``detected`` (what ``ctdna`` criteria and variables read).
A result with no (or a contained) specimen is a draw of its own (``row_id("Observation", id, "ctdna")``).
The merged row's ``measurement_id`` names the tumour-fraction result's measurement (a draw with a
detected result only, of its own specimen, names none): which result is written first — file
order, batch, or which of two concurrent ingest processes — must not change the row.
Known limit: when one result of a draw is later *updated*, the merged row keeps the older value of
that column (fill-only); deleting and reloading the draw's Observations refreshes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Numeric, and_, cast, exists, false, func, or_, select, true, update

from cdm.schema import tables
from node import fhir_profile as fp
from node.ingest.contract import Row
from node.ingest.mappers.observation import map_general
from node.ingest.mappers.values import code_keys, first_code, number

DETECTED = frozenset({(fp.LOINC, "LA11882-0"), (fp.SNOMED, "260373001"), (fp.LOINC, "LA9633-4")})
NOT_DETECTED = frozenset({(fp.LOINC, "LA11883-8"), (fp.SNOMED, "260415000"), (fp.LOINC, "LA9634-2")})
PLASMA_TYPES = frozenset({(fp.SNOMED, fp.PLASMA_SPECIMEN), (fp.RADFED, fp.CFDNA_TYPE)})


def specimen_of(resource: dict) -> dict | None:
    """The Specimen resource behind ``resource.specimen`` when it can be read without the database."""
    ref = (resource.get("specimen") or {}).get("reference") or ""
    if ref.startswith("#"):
        return next((c for c in resource.get("contained") or () if c.get("id") == ref[1:]), None)
    return None


def is_plasma(specimen: dict | None) -> bool:
    if not specimen:
        return False
    return any(k in PLASMA_TYPES for k in code_keys(specimen.get("type")))


def specimen_id(resource: dict, ctx) -> int | None:
    ref = (resource.get("specimen") or {}).get("reference")
    if not ref or ref.startswith("#"):
        return None
    return ctx.reference_id(ref, "specimen")


def map_ctdna(resource: dict, ctx) -> list[Row]:
    """RADFED ``ctdna_tumour_fraction`` / ``ctdna_detected`` -> a measurement and its draw's ``ctdna_result``."""
    rows = map_general(resource, ctx)
    if not rows:
        return rows
    main = rows[0].values
    keys = code_keys(resource.get("code"))
    result = {"tumour_fraction": None, "detected": None}
    fraction_result = (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION) in keys
    if fraction_result:
        q = resource.get("valueQuantity") or {}
        if q.get("value") is not None:
            fraction = number(q["value"], "tumour fraction")
            result["tumour_fraction"] = fraction / 100.0 if (q.get("code") or q.get("unit")) == "%" else fraction
    else:
        value = code_keys(resource.get("valueCodeableConcept"))
        if any(k in DETECTED for k in value):
            result["detected"] = True
        elif any(k in NOT_DETECTED for k in value):
            result["detected"] = False
        elif isinstance(resource.get("valueBoolean"), bool):
            result["detected"] = resource["valueBoolean"]
    day = main.get("measurement_date") or main.get("observation_date")
    specimen_ref = (resource.get("specimen") or {}).get("reference") or ""
    own_draw = not specimen_ref.startswith("Specimen/")
    draw = ctx.row_id("Observation", resource["id"], "ctdna") if own_draw \
        else ctx.row_id("Specimen", specimen_ref.rsplit("/", 1)[-1], "ctdna")
    rows.append(Row("ctdna_result", {
        "ctdna_result_id": draw,
        "person_id": main["person_id"],
        "specimen_id": specimen_id(resource, ctx),
        "measurement_id": main.get("measurement_id") if own_draw or fraction_result else None,
        "result_date": day,
        "assay": (first_code(resource.get("method")) or "")[:255] or None,
        **result,
        "max_vaf": None,
        "mean_vaf": None,
    }))
    return rows


def reconcile_ctdna(conn: Connection, person_ids: Iterable[int] | None = None) -> dict[str, int]:
    """After a load: mark variants on plasma/cfDNA specimens as ctDNA; fill each draw's max/mean VAF.

    Set-based UPDATEs over the persons a run touched (``None``: everyone), in chunks; the draw's
    variants are found through the person index.  Idempotent; returns rows changed.
    """
    concept, specimen = tables["concept"], tables["specimen"]
    variant, ctdna = tables["variant_occurrence"], tables["ctdna_result"]
    plasma_concepts = list(conn.execute(select(concept.c.concept_id).where(or_(
        and_(concept.c.vocabulary_id == "SNOMED", concept.c.concept_code == fp.PLASMA_SPECIMEN),
        and_(concept.c.vocabulary_id == "RADFED", concept.c.concept_code == fp.CFDNA_TYPE)))).scalars())
    chunks = [None] if person_ids is None else _chunks(sorted(set(person_ids)))
    marked = filled = 0
    for chunk in chunks:
        plasma = select(specimen.c.specimen_id).where(specimen.c.specimen_concept_id.in_(plasma_concepts))
        mark = update(variant).where(variant.c.is_ctdna == false(), variant.c.specimen_id.in_(plasma))
        draw = and_(variant.c.person_id == ctdna.c.person_id, variant.c.specimen_id == ctdna.c.specimen_id,
                    variant.c.is_ctdna == true(), variant.c.allele_frequency.isnot(None))
        fill = update(ctdna).where(ctdna.c.specimen_id.isnot(None), exists(select(variant.c.variant_occurrence_id).where(draw)))
        if chunk is not None:
            mark = mark.where(variant.c.person_id.in_(chunk))
            fill = fill.where(ctdna.c.person_id.in_(chunk))
        marked += max(conn.execute(mark.values(is_ctdna=True)).rowcount, 0)
        filled += max(conn.execute(fill.values(
            max_vaf=select(func.max(variant.c.allele_frequency)).where(draw).scalar_subquery(),
            # summed as exact decimals: a float sum's last bit would depend on the order the rows are read
            mean_vaf=select(func.avg(cast(variant.c.allele_frequency, Numeric))).where(draw).scalar_subquery())).rowcount, 0)
    return {"variants_marked_ctdna": marked, "ctdna_results_with_vaf": filled}


def _chunks(values: list[int], size: int = 1_000) -> Iterable[list[int]]:
    return (values[i:i + size] for i in range(0, len(values), size))
