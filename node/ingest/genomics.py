"""Genomic and liquid-biopsy Observations -> ``variant_occurrence`` / ``variant_annotation`` / ``ctdna_result``.

**Variants** follow the HL7 Genomics Reporting IG (STU2/STU3) "Variant" profile: an Observation coded
LOINC 69548-6 whose components carry (LOINC) the gene studied 48018-6 (HGNC coding; two for a
fusion, the 5' partner first), c.HGVS 48004-6, p.HGVS 48005-3, sample allelic frequency 81258-6,
copy number 82155-3, DNA change type 48019-4 (Sequence Ontology), genomic source class 48002-0,
reference / alternate allele 69547-8 / 69551-0, genomic reference sequence 48013-7, discrete variant
81252-9 (dbSNP), allelic read depth 82121-5, and clinical significance 53037-8.  One Observation is
one ``variant_occurrence`` row (the Genomic CDM, G-CDM), id ``row_id("Observation", id)``:

* ``variant_type`` is the value set the query side uses (:data:`cdm.spec.VariantType`): SO
  ``snv`` (SO:0001483), ``indel`` (insertions, deletions, delins, MNVs),
  ``cnv`` (copy-number gain/amplification, SO:0001742, or a copy number with no change type), ``loss``
  (copy-number loss, SO:0001743: the biallelic or LOH loss of a tumour suppressor), ``fusion``
  (SO:0001565, or two genes studied);
* ``target_gene1`` is the (5') gene, ``target_gene2`` the 3' fusion partner (FUS::DDIT3 -> FUS, DDIT3);
* a VAF sent in ``%`` is stored as a fraction (0-1);
* a genomic source class of germline/somatic gives ``genetic_origin``; a clinical significance
  component becomes a ``variant_annotation`` row (``clinical_significance``).

A value of LOINC LA9634-2 "Absent" (a tested, negative variant) is no variant: it is kept as a
measurement of the assessment (general path), never as a variant row.

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
Known limit: when one result of a draw is later *updated*, the merged row keeps the older value of
that column (fill-only); deleting and reloading the draw's Observations refreshes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, and_, exists, false, func, or_, select, true, update

from cdm.schema import tables
from node import fhir_profile as fp
from node.ingest.contract import Row, Unmappable
from node.ingest.observations import (
    code_keys, component_index, component_string, effective, first_code, map_general, number,
)

HGVS_REFERENCE_SEQUENCE = "48013-7"
DISCRETE_VARIANT = "81252-9"
ALLELIC_READ_DEPTH = "82121-5"
CLINICAL_SIGNIFICANCE = "53037-8"
ABSENT = (fp.LOINC, "LA9634-2")
DETECTED = frozenset({(fp.LOINC, "LA11882-0"), (fp.SNOMED, "260373001"), (fp.LOINC, "LA9633-4")})
NOT_DETECTED = frozenset({(fp.LOINC, "LA11883-8"), (fp.SNOMED, "260415000"), (fp.LOINC, "LA9634-2")})

#: Sequence Ontology change type -> (variant_type, copy_number_change).
SO_TYPES = {
    fp.SO_SNV: ("snv", None), "SO:0002007": ("indel", None),  # SNV, MNV
    fp.SO_INDEL: ("indel", None), "SO:0000159": ("indel", None), "SO:0000667": ("indel", None),  # delins, del, ins
    "SO:0001019": ("cnv", None), fp.SO_COPY_NUMBER_GAIN: ("cnv", "amplification"),  # copy_number_variation, gain
    fp.SO_COPY_NUMBER_LOSS: ("loss", "loss"),
    fp.SO_GENE_FUSION: ("fusion", None), "SO:0001886": ("fusion", None),  # gene_fusion, transcript_fusion
}
SOMATIC_CODES = frozenset({fp.SOMATIC, "somatic"})
GERMLINE_CODES = frozenset({fp.GERMLINE, "germline"})
PLASMA_TYPES = frozenset({(fp.SNOMED, fp.PLASMA_SPECIMEN), (fp.RADFED, fp.CFDNA_TYPE)})

MISSING_GENE = "MISSING_GENE"


def _loinc(components: dict, code: str) -> dict | None:
    return components.get((fp.LOINC, code))


def _quantity(comp: dict | None, what: str) -> tuple[float | None, str | None]:
    q = (comp or {}).get("valueQuantity")
    if not q or q.get("value") is None:
        if comp is not None and comp.get("valueInteger") is not None:
            return number(comp["valueInteger"], what), None
        return None, None
    return number(q["value"], what), q.get("code") or q.get("unit")


def _genes(resource: dict) -> list[tuple[dict, str]]:
    """(gene CodeableConcept, symbol) per gene-studied component, in order."""
    out = []
    for comp in resource.get("component") or ():
        if (fp.LOINC, fp.GENE_STUDIED) in code_keys(comp.get("code")):
            cc = comp.get("valueCodeableConcept") or {}
            coding = next(iter(cc.get("coding") or ()), {})
            symbol = coding.get("display") or cc.get("text") or coding.get("code")
            out.append((cc, symbol))
    return out


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


def _specimen_id(resource: dict, ctx) -> int | None:
    ref = (resource.get("specimen") or {}).get("reference")
    if not ref or ref.startswith("#"):
        return None
    return ctx.reference_id(ref, "specimen")


def _variant_type(change: str | None, genes: int, copy_number: float | None, hgvs_c: str | None):
    if change in SO_TYPES:
        return SO_TYPES[change]
    if genes > 1:
        return "fusion", None
    if copy_number is not None:
        return ("loss", "loss") if copy_number < 2 else ("cnv", "gain" if copy_number > 2 else None)
    if hgvs_c and any(t in hgvs_c for t in ("del", "ins", "dup")):
        return "indel", None
    return "snv", None


def map_variant(resource: dict, ctx) -> list[Row]:
    """Genomics Reporting IG Variant (LOINC 69548-6) -> ``variant_occurrence`` (+ ``variant_annotation``)."""
    if ABSENT in code_keys(resource.get("valueCodeableConcept")):
        return map_general(resource, ctx)
    person_id = ctx.person_id((resource.get("subject") or {}).get("reference"))
    day, _ = effective(resource)
    comps = component_index(resource)
    genes = _genes(resource)
    if not genes:
        raise Unmappable(MISSING_GENE, "variant Observation has no gene-studied (LOINC 48018-6) component")
    gene1 = ctx.concept(genes[0][0])
    gene2 = ctx.concept(genes[1][0]) if len(genes) > 1 else None
    hgvs_c, hgvs_p = component_string(_loinc(comps, fp.HGVS_C)), component_string(_loinc(comps, fp.HGVS_P))
    vaf, vaf_unit = _quantity(_loinc(comps, fp.ALLELE_FREQUENCY), "allele frequency")
    if vaf is not None and vaf_unit == "%":
        vaf /= 100.0
    copy_number, _ = _quantity(_loinc(comps, fp.COPY_NUMBER), "copy number")
    depth, _ = _quantity(_loinc(comps, ALLELIC_READ_DEPTH), "read depth")
    change = component_string(_loinc(comps, fp.DNA_CHANGE_TYPE))
    variant_type, cn_change = _variant_type(change, len(genes), copy_number, hgvs_c)
    if variant_type == "loss" and copy_number == 0:
        cn_change = "homozygous deletion"
    origin_code = component_string(_loinc(comps, fp.GENOMIC_SOURCE_CLASS))
    origin = "somatic" if origin_code in SOMATIC_CODES else "germline" if origin_code in GERMLINE_CODES else None
    reference_sequence = component_string(_loinc(comps, HGVS_REFERENCE_SEQUENCE))
    if reference_sequence is None and hgvs_c and ":" in hgvs_c:
        reference_sequence = hgvs_c.split(":", 1)[0]
    rs_id = component_string(_loinc(comps, DISCRETE_VARIANT))
    variant_id = ctx.row_id("Observation", resource["id"])
    symbols = "::".join(s for _, s in genes if s) if variant_type == "fusion" else genes[0][1]
    rows = [Row("variant_occurrence", {
        "variant_occurrence_id": variant_id,
        "person_id": person_id,
        "specimen_id": _specimen_id(resource, ctx),
        "variant_date": day,
        "target_gene1_concept_id": gene1.concept_id,
        "target_gene1_symbol": (genes[0][1] or "")[:50] or None,
        "target_gene2_concept_id": gene2.concept_id if gene2 else None,
        "target_gene2_symbol": ((genes[1][1] or "")[:50] or None) if gene2 else None,
        "variant_type": variant_type,
        "reference_sequence": (reference_sequence or "")[:50] or None,
        "rs_id": rs_id[:50] if rs_id and rs_id.lower().startswith("rs") else None,
        "reference_allele": (component_string(_loinc(comps, fp.REF_ALLELE)) or "")[:255] or None,
        "alternate_allele": (component_string(_loinc(comps, fp.ALT_ALLELE)) or "")[:255] or None,
        "hgvs_c": (hgvs_c or "")[:255] or None,
        "hgvs_p": (hgvs_p or "")[:255] or None,
        "allele_frequency": vaf,
        "read_depth": int(depth) if depth is not None else None,
        "copy_number": copy_number,
        "copy_number_change": cn_change,
        "fusion_breakpoint": None,
        "genetic_origin": origin,
        "is_ctdna": is_plasma(specimen_of(resource)),
        "variant_source_value": f"{symbols or ''} {hgvs_c or hgvs_p or change or ''}".strip()[:255] or None,
    })]
    significance = _loinc(comps, CLINICAL_SIGNIFICANCE)
    if significance is not None:
        cc = significance.get("valueCodeableConcept")
        rows.append(Row("variant_annotation", {
            "variant_annotation_id": ctx.row_id("Observation", resource["id"], "clinical_significance"),
            "variant_occurrence_id": variant_id,
            "annotation_field": "clinical_significance",
            "value_as_string": (((cc or {}).get("coding") or [{}])[0].get("display") or component_string(significance)
                                or "")[:1000] or None,
            "value_as_concept_id": ctx.concept(cc).concept_id if cc else None,
            "annotation_source": "FHIR Genomics Reporting IG",
        }))
    return rows


def map_ctdna(resource: dict, ctx) -> list[Row]:
    """RADFED ``ctdna_tumour_fraction`` / ``ctdna_detected`` -> a measurement and its draw's ``ctdna_result``."""
    rows = map_general(resource, ctx)
    if not rows:
        return rows
    main = rows[0].values
    keys = code_keys(resource.get("code"))
    result = {"tumour_fraction": None, "detected": None}
    if (fp.RADFED, fp.CTDNA_TUMOUR_FRACTION) in keys:
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
    draw = ctx.row_id("Specimen", specimen_ref.rsplit("/", 1)[-1], "ctdna") if specimen_ref.startswith("Specimen/") \
        else ctx.row_id("Observation", resource["id"], "ctdna")
    rows.append(Row("ctdna_result", {
        "ctdna_result_id": draw,
        "person_id": main["person_id"],
        "specimen_id": _specimen_id(resource, ctx),
        "measurement_id": main.get("measurement_id"),
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
            mean_vaf=select(func.avg(variant.c.allele_frequency)).where(draw).scalar_subquery())).rowcount, 0)
    return {"variants_marked_ctdna": marked, "ctdna_results_with_vaf": filled}


def _chunks(values: list[int], size: int = 1_000) -> Iterable[list[int]]:
    return (values[i:i + size] for i in range(0, len(values), size))
