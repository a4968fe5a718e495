"""Genomic variant Observations -> ``variant_occurrence`` / ``variant_annotation``.

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
  component becomes a ``variant_annotation`` row (``clinical_significance``);
* the Procedure the Observation is ``partOf`` (the sequencing) gives ``procedure_occurrence_id``, its
  ``specimen`` the ``specimen_id`` (G-CDM requires both; without them in the source they stay empty).

A value of LOINC LA9634-2 "Absent" (a tested, negative variant) is no variant: it is kept as a
measurement of the assessment (general path), never as a variant row.

A variant on a plasma / cell-free DNA specimen is a ctDNA variant (``is_ctdna``; see :mod:`.ctdna`).

As OMOP Genomic has it, each variant is also a ``measurement`` row, which
``variant_occurrence.measurement_id`` names (:mod:`cdm.conformance`).
"""

from __future__ import annotations

from cdm.conformance import variant_measurement_concept

from node import fhir_profile as fp
from node.ingest.contract import Row, Unmappable
from node.ingest.mappers.ctdna import is_plasma, specimen_id, specimen_of
from node.ingest.mappers.observation import map_general
from node.ingest.mappers.values import (
    EHR, code_keys, component_index, component_string, effective, first_code, number, part_of_procedure, reference,
)

HGVS_REFERENCE_SEQUENCE = "48013-7"
DISCRETE_VARIANT = "81252-9"
ALLELIC_READ_DEPTH = "82121-5"
CLINICAL_SIGNIFICANCE = "53037-8"
ABSENT = (fp.LOINC, "LA9634-2")

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


def _variant_measurement(resource: dict, ctx, variant: dict, day, reference_sequence: str | None) -> Row:
    """OMOP Genomic: the variant as a MEASUREMENT row (the OMOP Genomic concept of the variant where the
    node's vocabulary has one, else the Observation's own code, LOINC 69548-6), which
    ``variant_occurrence.measurement_id`` points to."""
    hgvs_c = variant["hgvs_c"]
    qualified = f"{reference_sequence}:{hgvs_c}" if hgvs_c and reference_sequence and ":" not in hgvs_c else None
    genomic = variant_measurement_concept(ctx.known_concept, (qualified, hgvs_c, variant["hgvs_p"],
                                                              variant["target_gene1_symbol"]))
    code = ctx.concept(resource.get("code"), "Measurement")
    value = resource.get("valueCodeableConcept")
    measurement_id = ctx.row_id("Observation", resource["id"], "measurement")
    variant["measurement_id"] = measurement_id
    return Row("measurement", {
        "measurement_id": measurement_id,
        "person_id": variant["person_id"],
        "measurement_concept_id": genomic or code.concept_id,
        "measurement_date": day,
        "measurement_type_concept_id": EHR,
        "value_as_concept_id": ctx.concept(value).concept_id if value else None,
        "visit_occurrence_id": ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"),
        "measurement_source_value": (variant["variant_source_value"] or "")[:50] or None,
        "measurement_source_concept_id": code.source_concept_id,
        "value_source_value": (first_code(value) or "")[:50] or None,
    })


def map_variant(resource: dict, ctx) -> list[Row]:
    """Genomics Reporting IG Variant (LOINC 69548-6) -> ``variant_occurrence`` (+ ``variant_annotation``)."""
    if ABSENT in code_keys(resource.get("valueCodeableConcept")):
        return map_general(resource, ctx)
    person_id = ctx.person_id(reference(resource.get("subject")))
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
    procedure = part_of_procedure(resource)  # the sequencing procedure (G-CDM makes the link NOT NULL)
    symbols = "::".join(s for _, s in genes if s) if variant_type == "fusion" else genes[0][1]
    rows = [Row("variant_occurrence", {
        "variant_occurrence_id": variant_id,
        "person_id": person_id,
        "specimen_id": specimen_id(resource, ctx),
        "procedure_occurrence_id": ctx.reference_id(procedure, "procedure_occurrence") if procedure else None,
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
    rows.append(_variant_measurement(resource, ctx, rows[0].values, day, reference_sequence))
    return rows
