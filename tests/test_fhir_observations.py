"""Observation-family FHIR mappers (node.ingest.mappers: observation, variant, ctdna, image_feature...).

The mappers run against a real SQLite CDM through :class:`FileContext`, a small MapContext over the
node's real :class:`~cdm.vocabulary.Vocabulary`, on hand-written resources and on a generated site
(node.synth); the generated site's rows are then queried with real specs through
``node.execute.run_request`` and must give the facts the generator planted.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, insert, select

from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import Vocabulary, vocabulary_for_uri
from node import fhir_profile as fp
from node.execute import run_request
from node.ingest.contract import Unmappable
from node.ingest.mappers import MAPPERS, ctdna
from node.ingest.mappers.values import RADFED_IDS
from node.synth import SynthOptions, generate

SEED, PATIENTS = 2, 120
UCUM = fp.UCUM


class FileContext:
    """A MapContext over a real CDM: persons/references known once :meth:`load` has seen them."""

    mrn_system = fp.DEFAULT_MRN_SYSTEM

    def __init__(self, engine):
        self.vocabulary = Vocabulary(engine)
        self.present: set[tuple[str, str]] = set()

    def load(self, resource_type: str, resource_id: str) -> None:
        self.present.add((resource_type, resource_id))

    def row_id(self, resource_type, resource_id, *part):
        return stable_id("fhir", resource_type, resource_id, *part)

    def _split(self, reference):
        if not reference or "/" not in reference:
            return None
        resource_type, resource_id = reference.rsplit("/", 2)[-2:]
        return (resource_type, resource_id) if (resource_type, resource_id) in self.present else None

    def person_id(self, reference):
        target = self._split(reference)
        if target is None or target[0] != "Patient":
            raise Unmappable("UNKNOWN_PATIENT", f"{reference!r} is not a loaded patient")
        return self.row_id(*target)

    def reference_id(self, reference, cdm_table):
        target = self._split(reference)
        return None if target is None else self.row_id(*target)

    def concept(self, codeable, domain_hint=None):
        codings = [c for c in (codeable or {}).get("coding") or () if c.get("code")]
        if not codings:
            from cdm.vocabulary import ConceptMatch
            return ConceptMatch(0, 0, None, False)
        first = codings[0]
        return self.vocabulary.concept_for(vocabulary_for_uri(first.get("system")), first["code"],
                                           first.get("display"), domain_hint)

    def known_concept(self, vocabulary_id, code):
        match = self.vocabulary.lookup(vocabulary_id, code)
        return match.concept_id if match is not None and match.concept_id else None

    def unit(self, quantity):
        if not quantity or not quantity.get("code"):
            from cdm.vocabulary import ConceptMatch
            return ConceptMatch(0, 0, None, False)
        return self.concept({"coding": [{"system": UCUM, "code": quantity["code"]}]}, "Unit")


def write(engine, rows) -> None:
    """Insert rows; rows sharing a key are merged the way the ingest's writer merges them (fill what is empty)."""
    by_key: dict = {}
    for row in rows:
        key_column = next(iter(tables[row.table].primary_key.columns)).name
        merged = by_key.setdefault((row.table, row.values[key_column]), {c: None for c in tables[row.table].c.keys()})
        merged.update({c: v for c, v in row.values.items() if merged.get(c) is None})
    by_table = defaultdict(list)
    for (table, _), values in by_key.items():
        by_table[table].append(values)
    with engine.begin() as conn:
        for table, values in by_table.items():
            conn.execute(insert(tables[table]), values)


def count(engine, table, *where) -> int:
    t = tables[table]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()


@pytest.fixture
def ctx(sqlite_cdm):
    c = FileContext(sqlite_cdm)
    c.load("Patient", "p1")
    with sqlite_cdm.begin() as conn:
        conn.execute(insert(tables["person"]).values(person_id=c.row_id("Patient", "p1"), gender_concept_id=8507,
                                                     year_of_birth=1970, race_concept_id=0, ethnicity_concept_id=0))
    return c


def obs(code, **extra) -> dict:
    system, value = code
    return {"resourceType": "Observation", "id": extra.pop("id", "o1"), "status": "final",
            "code": {"coding": [{"system": system, "code": value}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T10:00:00+02:00", **extra}


def comp(code, **value) -> dict:
    system, c = code
    return {"code": {"coding": [{"system": system, "code": c}]}, **value}


def qty(value, unit) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def cc(system, code, display=None) -> dict:
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


MAP = MAPPERS


# -- the general path ------------------------------------------------------------------------------------

def test_lab_quantity_becomes_a_measurement_with_ucum_unit_and_operator(ctx):
    resource = obs((fp.LOINC, "2160-0"), category=[cc(fp.OBSERVATION_CATEGORY, "laboratory")],
                   valueQuantity={**qty(1.2, "mg/dL"), "comparator": "<"},
                   referenceRange=[{"low": {"value": 0.6}, "high": {"value": 1.3}}])
    [row] = MAP["Observation"](resource, ctx)
    v = row.values
    assert row.table == "measurement" and v["measurement_id"] == ctx.row_id("Observation", "o1")
    # local clock time, as written (10:00+02:00): one date rule for every resource (mappers/values.py)
    assert v["measurement_date"] == dt.date(2024, 3, 1) and v["measurement_datetime"] == dt.datetime(2024, 3, 1, 10, 0)
    assert v["value_as_number"] == 1.2 and v["operator_concept_id"] == 4171756 and v["measurement_type_concept_id"] == 32817
    assert v["unit_source_value"] == "mg/dL" and v["unit_concept_id"] == ctx.unit(qty(1, "mg/dL")).concept_id > 0
    assert (v["range_low"], v["range_high"]) == (0.6, 1.3)
    assert v["measurement_concept_id"] == ctx.vocabulary.lookup("LOINC", "2160-0").concept_id


def test_value_types_follow_the_domain_of_the_code(ctx):
    social = [cc(fp.OBSERVATION_CATEGORY, "social-history")]
    rows = {}
    for i, value in enumerate(({"valueString": "ex-smoker since 2010"}, {"valueBoolean": True},
                               {"valueInteger": 3}, {"valueRange": {"low": qty(1, "mm"), "high": qty(4, "mm")}},
                               {"valueCodeableConcept": cc(fp.SNOMED, "8517006", "Ex-smoker")})):
        [row] = MAP["Observation"](obs(("urn:x", f"c{i}"), id=f"v{i}", category=social, **value), ctx)
        rows[i] = row
    assert all(r.table == "observation" for r in rows.values())
    assert rows[0].values["value_as_string"] == "ex-smoker since 2010"
    assert rows[1].values["value_as_concept_id"] == 4188539 and rows[1].values["value_as_number"] == 1.0
    assert rows[2].values["value_as_number"] == 3.0
    assert rows[3].values["value_as_string"] == "1-4" and rows[3].values["unit_source_value"] == "mm"
    assert rows[4].values["value_as_concept_id"] == ctx.vocabulary.lookup("SNOMED", "8517006").concept_id
    # a known Measurement-domain code (a RADFED lab concept) is a measurement whatever its category
    [row] = MAP["Observation"](obs((fp.RADFED, "ctdna_max_vaf"), id="m", category=social,
                                   valueRange={"low": qty(0.1, "1"), "high": qty(0.2, "1")}), ctx)
    assert row.table == "measurement" and (row.values["range_low"], row.values["range_high"]) == (0.1, 0.2)


def test_the_vocabulary_domain_of_the_code_decides_the_table(ctx, sqlite_cdm):
    from cdm.vocabulary import load_athena

    load_athena(sqlite_cdm, Path(__file__).parent / "fixtures" / "athena")
    with sqlite_cdm.begin() as conn:  # an Athena LOINC concept of the Observation domain
        conn.execute(insert(tables["concept"]).values(
            concept_id=3012697, concept_name="Tobacco smoking status", domain_id="Observation", vocabulary_id="LOINC",
            concept_class_id="Survey", standard_concept="S", concept_code="72166-2",
            valid_start_date=dt.date(1970, 1, 1), valid_end_date=dt.date(2099, 12, 31)))
    ctx.vocabulary = Vocabulary(sqlite_cdm)
    lab = [cc(fp.OBSERVATION_CATEGORY, "laboratory")]
    [smoking] = MAP["Observation"](obs((fp.LOINC, "72166-2"), category=lab, valueCodeableConcept=cc(fp.SNOMED, "8517006")), ctx)
    assert smoking.table == "observation" and smoking.values["observation_concept_id"] == 3012697
    [creatinine] = MAP["Observation"](obs((fp.LOINC, "2160-0"), valueQuantity=qty(0.9, "mg/dL")), ctx)
    assert creatinine.table == "measurement" and creatinine.values["measurement_concept_id"] == 3016723


def test_components_are_rows_and_a_panel_without_value_is_not(ctx):
    bp = obs((fp.LOINC, "85354-9"), category=[cc(fp.OBSERVATION_CATEGORY, "vital-signs")], component=[
        comp((fp.LOINC, "8480-6"), valueQuantity=qty(120, "mm[Hg]")),
        comp((fp.LOINC, "8462-4"), valueQuantity=qty(80, "mm[Hg]")),
        comp((fp.LOINC, "8478-0"))])  # no value: nothing to store
    rows = MAP["Observation"](bp, ctx)
    assert [r.values["value_as_number"] for r in rows] == [120.0, 80.0]
    assert [r.values["measurement_id"] for r in rows] == [ctx.row_id("Observation", "o1", "component", i) for i in (0, 1)]


def test_bad_observations_are_refused_with_stable_codes(ctx):
    cases = [
        (obs((fp.LOINC, "718-7"), subject={"reference": "Patient/nobody"}, valueQuantity=qty(13, "g/dL")), "UNKNOWN_PATIENT"),
        ({**obs((fp.LOINC, "718-7"), valueQuantity=qty(13, "g/dL")), "effectiveDateTime": None}, "MISSING_DATE"),
        (obs((fp.LOINC, "718-7"), effectiveDateTime="2024-13-45T00:00:00Z"), "BAD_DATE"),
        (obs((fp.LOINC, "718-7"), valueQuantity={"value": "high", "code": "g/dL"}), "BAD_VALUE"),
        ({**obs((fp.LOINC, "x")), "code": {"text": ""}}, "NO_CODE"),
    ]
    for resource, code in cases:
        with pytest.raises(Unmappable) as err:
            MAP["Observation"](resource, ctx)
        assert err.value.code == code
    assert MAP["Observation"](obs((fp.LOINC, "718-7"), status="entered-in-error", valueQuantity=qty(1, "g/dL")), ctx) == []


# -- genomics -----------------------------------------------------------------------------------------------

def variant(*comps, **extra):
    return obs((fp.LOINC, fp.VARIANT_ASSESSMENT), valueCodeableConcept=cc(fp.LOINC, "LA9633-4"),
               component=list(comps), **extra)


def gene(symbol, hgnc):
    return comp((fp.LOINC, fp.GENE_STUDIED), valueCodeableConcept=cc(fp.HGNC, hgnc, symbol))


def change(so):
    return comp((fp.LOINC, fp.DNA_CHANGE_TYPE), valueCodeableConcept=cc(fp.SEQUENCE_ONTOLOGY, so))


def test_variants_follow_the_genomics_reporting_ig(ctx):
    ctx.load("Specimen", "tissue")
    [snv] = MAP["Observation"](variant(
        gene("EGFR", "HGNC:3236"), comp((fp.LOINC, fp.HGVS_C), valueCodeableConcept=cc("http://varnomen.hgvs.org", "NM_005228.5:c.2573T>G")),
        comp((fp.LOINC, fp.HGVS_P), valueCodeableConcept=cc("http://varnomen.hgvs.org", "p.Leu858Arg")),
        comp((fp.LOINC, fp.ALLELE_FREQUENCY), valueQuantity=qty(35, "%")), change(fp.SO_SNV),
        comp((fp.LOINC, fp.GENOMIC_SOURCE_CLASS), valueCodeableConcept=cc(fp.LOINC, fp.SOMATIC)),
        comp((fp.LOINC, "53037-8"), valueCodeableConcept=cc(fp.LOINC, "LA6668-3", "Pathogenic")),
        specimen={"reference": "Specimen/tissue"}), ctx)[:1]
    v = snv.values
    assert snv.table == "variant_occurrence" and v["variant_type"] == "snv" and v["target_gene1_symbol"] == "EGFR"
    assert v["target_gene1_concept_id"] == ctx.vocabulary.lookup("HGNC", "3236").concept_id
    assert v["hgvs_c"] == "NM_005228.5:c.2573T>G" and v["reference_sequence"] == "NM_005228.5" and v["hgvs_p"] == "p.Leu858Arg"
    assert v["allele_frequency"] == pytest.approx(0.35) and v["genetic_origin"] == "somatic" and v["is_ctdna"] is False
    assert v["specimen_id"] == ctx.row_id("Specimen", "tissue") and v["variant_date"] == dt.date(2024, 3, 1)
    annotation = MAP["Observation"](variant(gene("EGFR", "HGNC:3236"), comp((fp.LOINC, "53037-8"),
                                    valueCodeableConcept=cc(fp.LOINC, "LA6668-3", "Pathogenic"))), ctx)[1]
    assert annotation.table == "variant_annotation" and annotation.values["value_as_string"] == "Pathogenic"
    # OMOP Genomic: the variant is also a measurement row, which variant_occurrence.measurement_id names
    hgvs = (comp((fp.LOINC, fp.HGVS_C), valueCodeableConcept=cc("http://varnomen.hgvs.org", "c.2573T>G")),
            comp((fp.LOINC, "48013-7"), valueCodeableConcept=cc("http://www.ncbi.nlm.nih.gov/refseq", "NM_005228.5")))
    found, measurement = MAP["Observation"](variant(gene("EGFR", "HGNC:3236"), *hgvs), ctx)
    assert measurement.table == "measurement" and found.values["measurement_id"] == measurement.values["measurement_id"]
    assert measurement.values["measurement_concept_id"] == ctx.vocabulary.lookup("LOINC", fp.VARIANT_ASSESSMENT).concept_id
    assert measurement.values["value_as_concept_id"] == ctx.vocabulary.lookup("LOINC", "LA9633-4").concept_id
    with ctx.vocabulary._bind.begin() as conn:  # a site with Athena's OMOP Genomic: the variant's own concept
        conn.execute(insert(tables["concept"]).values(
            concept_id=1_990_000_001, concept_name="EGFR c.2573T>G", domain_id="Measurement", vocabulary_id="OMOP Genomic",
            concept_class_id="DNA Variant", standard_concept="S", concept_code="NM_005228.5:c.2573T>G",
            valid_start_date=dt.date(2020, 1, 1), valid_end_date=dt.date(2099, 1, 1)))
    ctx.vocabulary = Vocabulary(ctx.vocabulary._bind)
    _, measurement = MAP["Observation"](variant(gene("EGFR", "HGNC:3236"), *hgvs), ctx)
    assert measurement.values["measurement_concept_id"] == 1_990_000_001

    fusion, _ = MAP["Observation"](variant(gene("FUS", "HGNC:4010"), gene("DDIT3", "HGNC:2726"), change(fp.SO_GENE_FUSION)), ctx)
    assert (fusion.values["variant_type"], fusion.values["target_gene1_symbol"], fusion.values["target_gene2_symbol"]) == \
        ("fusion", "FUS", "DDIT3")
    assert fusion.values["variant_source_value"].startswith("FUS::DDIT3")
    amp, _ = MAP["Observation"](variant(gene("MDM2", "HGNC:6973"), change(fp.SO_COPY_NUMBER_GAIN),
                                       comp((fp.LOINC, fp.COPY_NUMBER), valueQuantity=qty(18.5, "1"))), ctx)
    assert (amp.values["variant_type"], amp.values["copy_number"], amp.values["copy_number_change"]) == ("cnv", 18.5, "amplification")
    loss, _ = MAP["Observation"](variant(gene("CDKN2A", "HGNC:1787"), change(fp.SO_COPY_NUMBER_LOSS),
                                        comp((fp.LOINC, fp.COPY_NUMBER), valueQuantity=qty(0, "1")),
                                        comp((fp.LOINC, fp.GENOMIC_SOURCE_CLASS), valueCodeableConcept=cc(fp.LOINC, fp.GERMLINE))), ctx)
    assert (loss.values["variant_type"], loss.values["copy_number_change"], loss.values["genetic_origin"]) == \
        ("loss", "homozygous deletion", "germline")


def test_contained_plasma_specimen_makes_a_ctdna_variant_and_bad_variants_are_refused(ctx):
    plasma = {"resourceType": "Specimen", "id": "s1", "type": cc(fp.SNOMED, fp.PLASMA_SPECIMEN)}
    row, _ = MAP["Observation"](variant(gene("EGFR", "HGNC:3236"), contained=[plasma], specimen={"reference": "#s1"}), ctx)
    assert row.values["is_ctdna"] is True and row.values["specimen_id"] is None
    with pytest.raises(Unmappable) as err:
        MAP["Observation"](variant(change(fp.SO_SNV)), ctx)
    assert err.value.code == "MISSING_GENE"
    # a tested-and-absent variant is no variant row, but nothing is lost: the assessment is a measurement
    absent = MAP["Observation"]({**variant(gene("EGFR", "HGNC:3236")), "valueCodeableConcept": cc(fp.LOINC, "LA9634-2")}, ctx)
    assert "variant_occurrence" not in {r.table for r in absent}
    assert absent[0].values["value_as_concept_id"] == ctx.vocabulary.lookup("LOINC", "LA9634-2").concept_id


def test_ctdna_results_write_a_measurement_and_a_ctdna_result(ctx):
    ctx.load("Specimen", "plasma")
    spec = {"reference": "Specimen/plasma"}
    tf = MAP["Observation"](obs((fp.RADFED, fp.CTDNA_TUMOUR_FRACTION), id="tf", valueQuantity=qty(4.2, "%"), specimen=spec), ctx)
    det = MAP["Observation"](obs((fp.RADFED, fp.CTDNA_DETECTED), id="det", specimen=spec,
                                 valueCodeableConcept=cc(fp.LOINC, "LA11883-8")), ctx)
    assert [r.table for r in tf] == ["measurement", "ctdna_result"] == [r.table for r in det]
    assert tf[1].values["tumour_fraction"] == pytest.approx(0.042) and tf[1].values["detected"] is None
    assert tf[1].values["measurement_id"] == tf[0].values["measurement_id"]
    # both results of the draw name one ctdna_result row, which the writer merges
    assert tf[1].values["ctdna_result_id"] == det[1].values["ctdna_result_id"] == ctx.row_id("Specimen", "plasma", "ctdna")
    assert tf[0].values["measurement_concept_id"] == RADFED_IDS[fp.CTDNA_TUMOUR_FRACTION]
    assert det[1].values["detected"] is False and det[1].values["specimen_id"] == ctx.row_id("Specimen", "plasma")


# -- disease status, DiagnosticReport --------------------------------------------------------------------------

def test_disease_status_becomes_an_episode_under_the_condition_episode(ctx):
    # the Episode vocabulary's Disease Dynamic concepts where one exists (issue 20), RADFED's "response" for "improved"
    for status, concept in ((fp.DISEASE_WORSENED, 32949), (fp.DISEASE_STABLE, 32948),
                            (fp.DISEASE_FULL_REMISSION, 32946), (fp.DISEASE_PARTIAL_REMISSION, 32947),
                            (fp.DISEASE_IMPROVED, RADFED_IDS["response"])):
        [row] = MAP["Observation"](obs((fp.LOINC, fp.CANCER_DISEASE_STATUS), valueCodeableConcept=cc(fp.SNOMED, status),
                                       focus=[{"reference": "Condition/c9"}]), ctx)
        v = row.values
        assert row.table == "episode" and v["episode_concept_id"] == concept
        assert v["episode_parent_id"] == ctx.row_id("Condition", "c9", "episode")
        assert v["episode_object_concept_id"] == ctx.vocabulary.lookup("SNOMED", status).concept_id
        assert v["episode_start_date"] == dt.date(2024, 3, 1) and v["episode_type_concept_id"] == 32817
    [undetermined] = MAP["Observation"](obs((fp.LOINC, fp.CANCER_DISEASE_STATUS),
                                            valueCodeableConcept=cc(fp.SNOMED, "709137006")), ctx)
    assert undetermined.table == "observation"


def test_diagnostic_report_maps_contained_results_and_conclusion_codes(ctx):
    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final", "code": cc(fp.LOINC, "81247-9"),
              "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-02-02",
              "contained": [variant(gene("TP53", "HGNC:11998"), id="v1", subject=None, effectiveDateTime=None)],
              "result": [{"reference": "#v1"}], "conclusionCode": [cc(fp.SNOMED, "1186717003")]}
    report["contained"][0].pop("subject")
    report["contained"][0].pop("effectiveDateTime")
    rows = MAP["DiagnosticReport"](report, ctx)
    assert [r.table for r in rows] == ["variant_occurrence", "measurement", "observation"]
    assert rows[0].values["variant_occurrence_id"] == ctx.row_id("Observation", "r1#v1")
    assert rows[0].values["variant_date"] == dt.date(2024, 2, 2)
    assert rows[2].values["value_as_concept_id"] == ctx.vocabulary.lookup("SNOMED", "1186717003").concept_id
    assert MAP["DiagnosticReport"]({**report, "contained": [], "conclusionCode": [],
                                    "conclusion": "No reportable variants detected."}, ctx) == []


# -- imaging, biopsies, wearables ---------------------------------------------------------------------------------

def test_imaging_study_and_features_name_the_dicom_series(ctx):
    study = {"resourceType": "ImagingStudy", "id": "is1", "status": "available", "subject": {"reference": "Patient/p1"},
             "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}], "started": "2024-03-01T09:00:00Z",
             "series": [{"uid": "1.2.3.1", "number": 1, "modality": {"system": fp.DICOM_DCM, "code": "MR"},
                         "numberOfInstances": 8, "bodySite": {"system": fp.SNOMED, "code": "12738006"}}]}
    row, procedure = MAP["ImagingStudy"](study, ctx)
    v = row.values
    assert v["image_occurrence_id"] == stable_id("dicom-series", "1.2.3.1") and v["image_study_uid"] == "1.2.3"
    # no procedureReference: the study is its own procedure (MI-CDM procedure_occurrence_id is NOT NULL)
    assert procedure.table == "procedure_occurrence" and v["procedure_occurrence_id"] == stable_id("imaging-study", "1.2.3", "procedure")
    assert procedure.values["procedure_occurrence_id"] == v["procedure_occurrence_id"]
    assert v["anatomic_site_source_value"] == "BRAIN" and v["modality_source_value"] == "MR" and v["image_source"] == "fhir"
    assert v["modality_concept_id"] == ctx.vocabulary.lookup("DICOM", "MR").concept_id and v["instance_count"] == 8
    for broken, reason in (({**study, "identifier": []}, "MISSING_STUDY_UID"),
                           ({**study, "series": [{**study["series"][0], "uid": ""}]}, "MISSING_SERIES_UID"),
                           ({**study, "started": None}, "MISSING_DATE")):
        with pytest.raises(Unmappable) as err:
            MAP["ImagingStudy"](broken, ctx)
        assert err.value.code == reason
    series = [comp((fp.DICOM_DCM, fp.SERIES_INSTANCE_UID), valueString="1.2.3.1"), comp((fp.DICOM_DCM, fp.FINDING), valueString="lesion-1")]
    feature, measurement = MAP["Observation"](obs((fp.RADFED, "adc_mean"), valueQuantity=qty(812.5, "um2/s"),
                                                  component=series), ctx)
    f = feature.values
    assert feature.table == "image_feature" and f["image_occurrence_id"] == v["image_occurrence_id"]
    assert f["image_feature_concept_id"] == RADFED_IDS["adc_mean"] and f["roi_label"] == "lesion-1"
    assert f["value_as_number"] == 812.5 and f["image_feature_type_concept_id"] == RADFED_IDS["type_reader"]
    # MI-CDM: the value is a measurement row the feature links to (event field: the MEASUREMENT table)
    m = measurement.values
    assert measurement.table == "measurement" and f["image_feature_event_id"] == m["measurement_id"]
    assert f["image_feature_event_field_concept_id"] == 1147330
    assert (m["measurement_concept_id"], m["value_as_number"], m["unit_concept_id"]) == (
        f["image_feature_concept_id"], 812.5, f["unit_concept_id"])
    flag, _ = MAP["Observation"](obs((fp.RADFED, "calcification"), valueBoolean=True, component=series), ctx)
    assert flag.values["value_as_number"] == 1.0
    [orphan] = MAP["Observation"](obs((fp.RADFED, "adc_mean"), valueQuantity=qty(800, "um2/s")), ctx)
    assert orphan.table == "measurement"  # no series to hang it on: kept as a measurement


def test_biopsy_location_rows_and_their_errors(ctx):
    ctx.load("Procedure", "bx")

    def radfed(code, **value):
        return comp((fp.RADFED, code), **value)

    comps = [radfed(fp.BIOPSY_X, valueQuantity=qty(1.5, "cm")), radfed(fp.BIOPSY_Y, valueQuantity=qty(-20, "mm")),
             radfed(fp.BIOPSY_Z, valueQuantity=qty(30, "mm")), radfed(fp.REGISTRATION_ERROR, valueQuantity=qty(2.5, "mm")),
             radfed(fp.HABITAT_LABEL, valueCodeableConcept=cc(fp.RADFED, "habitat_necrotic")),
             radfed(fp.HABITAT_BORDER_DISTANCE, valueQuantity=qty(4, "mm")),
             comp((fp.DICOM_DCM, fp.SERIES_INSTANCE_UID), valueString="9.8.7")]
    [row] = MAP["Observation"](obs((fp.RADFED, fp.BIOPSY_LOCATION), component=comps, partOf=[{"reference": "Procedure/bx"}]), ctx)
    v = row.values
    assert (v["x_mm"], v["y_mm"], v["z_mm"], v["registration_error_mm"]) == (15.0, -20.0, 30.0, 2.5)
    assert v["habitat_label"] == "necrotic" and v["habitat_concept_id"] == RADFED_IDS["habitat_necrotic"]
    assert v["procedure_occurrence_id"] == ctx.row_id("Procedure", "bx") and v["image_occurrence_id"] == stable_id("dicom-series", "9.8.7")
    for broken, code in ((comps[1:], "INCOMPLETE_BIOPSY_LOCATION"),
                         ([radfed(fp.BIOPSY_X, valueQuantity=qty(1, "kg")), *comps[1:]], "BAD_VALUE")):
        with pytest.raises(Unmappable) as err:
            MAP["Observation"](obs((fp.RADFED, fp.BIOPSY_LOCATION), component=broken), ctx)
        assert err.value.code == code


def test_sampled_data_is_summarised_in_60_second_windows(ctx):
    ctx.load("Device", "w1")
    data = " ".join(["10"] * 30 + ["E"] + ["20"] * 29 + ["5", "7"])  # 1 Hz: 60 s then 2 s
    resource = obs((fp.LOINC, fp.HEART_RATE), effectiveDateTime=None, device={"reference": "Device/w1"},
                   effectivePeriod={"start": "2024-03-01T07:30:00Z"},
                   valueSampledData={"origin": qty(60, "/min"), "period": 1000, "factor": 2, "dimensions": 1, "data": data})
    rows = MAP["Observation"](resource, ctx)
    assert [r.table for r in rows] == ["signal_window", "signal_window"]
    first, second = (r.values for r in rows)
    assert first["n"] == 59 and first["min"] == 80.0 and first["max"] == 100.0
    assert first["mean"] == pytest.approx((30 * 80 + 29 * 100) / 59)
    assert first["sd"] == pytest.approx(math.sqrt(sum((x - first["mean"]) ** 2 for x in [80] * 30 + [100] * 29) / 58))
    assert second["window_start_datetime"] == dt.datetime(2024, 3, 1, 7, 31) and second["n"] == 2 and second["mean"] == 72.0
    assert first["signal_window_id"] == ctx.row_id("Observation", "o1", "window", 0)
    assert first["device_exposure_id"] == ctx.row_id("Device", "w1") and first["unit_source_value"] == "/min"
    two_d = MAP["Observation"]({**resource, "valueSampledData": {"origin": qty(0, "1"), "period": 30000, "dimensions": 2,
                                                                 "data": "1 10 2 20 3 30"}}, ctx)
    assert sorted((r.values["signal_window_id"], r.values["n"]) for r in two_d) == sorted([
        (ctx.row_id("Observation", "o1", "window", 0), 2), (ctx.row_id("Observation", "o1", "window", 1), 1),
        (ctx.row_id("Observation", "o1", "window", 1, 0), 2), (ctx.row_id("Observation", "o1", "window", 1, 1), 1)])
    for sampled in ({"origin": qty(0, "1"), "period": 0, "dimensions": 1, "data": "1"},
                    {"origin": qty(0, "1"), "period": 1000, "dimensions": 1, "data": "1 x 2"}):
        with pytest.raises(Unmappable) as err:
            MAP["Observation"]({**resource, "valueSampledData": sampled}, ctx)
        assert err.value.code == "BAD_VALUE"



def test_sampled_data_windows_of_an_all_number_stream_follow_the_sample_rule():
    # _windows reads an all-number one-dimension stream a window at a time; its windows and values
    # must be those of the sample-by-sample rule: value = origin + factor * datum, window
    # int(i * period // 60 s), non-finite values dropped (an "E" in the stream takes the rule itself).
    from node.ingest.mappers.sampled_data import _windows

    rng = random.Random(7)
    for period in (1000.0, 333.3, 17.0, 61000.0):
        tokens = [rng.choice([repr(rng.uniform(-50, 150)), str(rng.randint(0, 200)), "inf", "nan"]) for _ in range(700)]
        sampled = {"origin": {"value": 1.5}, "factor": 0.1, "period": period, "dimensions": 1, "data": " ".join(tokens)}
        expected: dict = {}
        for i, token in enumerate(tokens):
            value = 1.5 + 0.1 * float(token)
            if math.isfinite(value):
                expected.setdefault((0, int(i * period // 60000.0)), []).append(value)
        assert _windows(sampled, "o1") == expected
        assert _windows({**sampled, "data": " ".join(tokens + ["E"])}, "o1") == expected


# -- a generated site: every planted fact is a row the compiler finds ------------------------------------------

def ndjson(folder: Path, resource_type: str) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"{resource_type}.*.ndjson")):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return out


def code(resource) -> tuple:
    c = resource["code"]["coding"][0]
    return c["system"], c["code"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    truth = generate(out, SynthOptions(sites=1, patients=PATIENTS, seed=SEED, dicom=False, bad_records=False))
    folder = out / "site-1" / "fhir"
    return truth, {t: ndjson(folder, t) for t in ("Patient", "Specimen", "Procedure", "Device", "ImagingStudy",
                                                  "Observation", "DiagnosticReport")}, folder


@pytest.fixture
def site_db(sqlite_cdm, site):
    """The generated site mapped with the Observation-family mappers into a real CDM."""
    truth, res, _ = site
    ctx = FileContext(sqlite_cdm)
    person, specimen = tables["person"], tables["specimen"]
    specimen_concepts = {s["id"]: ctx.concept(s["type"], "Specimen").concept_id for s in res["Specimen"]}
    with sqlite_cdm.begin() as conn:
        for p in res["Patient"]:
            ctx.load("Patient", p["id"])
            conn.execute(insert(person).values(person_id=ctx.row_id("Patient", p["id"]), year_of_birth=int(p["birthDate"][:4]),
                                               gender_concept_id=8507 if p["gender"] == "male" else 8532,
                                               race_concept_id=0, ethnicity_concept_id=0))
        for s in res["Specimen"]:
            ctx.load("Specimen", s["id"])
            conn.execute(insert(specimen).values(
                specimen_id=ctx.row_id("Specimen", s["id"]), person_id=ctx.row_id(*s["subject"]["reference"].split("/")),
                specimen_concept_id=specimen_concepts[s["id"]], specimen_type_concept_id=32817,
                specimen_date=dt.date.fromisoformat(s["collection"]["collectedDateTime"][:10])))
    for kind in ("Procedure", "Device"):
        for r in res[kind]:
            ctx.load(kind, r["id"])
    rows = []
    for kind in ("ImagingStudy", "Observation", "DiagnosticReport"):
        for r in res[kind]:
            rows += MAPPERS[kind](r, ctx)
    write(sqlite_cdm, rows)
    with sqlite_cdm.begin() as conn:
        ctdna.reconcile_ctdna(conn)
    return sqlite_cdm, truth, res


def test_every_planted_fact_becomes_its_row(site_db):
    engine, truth, res = site_db
    observations = res["Observation"]
    by_code = defaultdict(list)
    for o in observations:
        by_code[code(o)].append(o)
    features = [o for o in observations if code(o)[0] == fp.RADFED and code(o)[1] in
                truth["query_references"]["image_features"]]
    assert count(engine, "image_occurrence") == sum(len(s["series"]) for s in res["ImagingStudy"])
    assert count(engine, "image_feature") == len(features) > 0
    assert count(engine, "variant_occurrence") == len(by_code[(fp.LOINC, fp.VARIANT_ASSESSMENT)]) > 0
    ctdna = by_code[(fp.RADFED, fp.CTDNA_TUMOUR_FRACTION)] + by_code[(fp.RADFED, fp.CTDNA_DETECTED)]
    draws = truth["realised"]["lung"]["ctdna_draws"] + sum(v["scans"] for k, v in truth["realised"].items() if k.startswith("nf1/"))
    assert len(ctdna) == 2 * draws and count(engine, "ctdna_result") == draws  # one row per draw: TF and detected merged
    c = tables["ctdna_result"]
    assert count(engine, "ctdna_result", c.c.detected.is_(None)) == count(engine, "ctdna_result", c.c.tumour_fraction.is_(None)) == 0
    assert count(engine, "episode") == len(by_code[(fp.LOINC, fp.CANCER_DISEASE_STATUS)]) > 0
    cores = sum(v["cores"] for k, v in truth["realised"].items() if k.startswith("glioma_habitat/label/"))
    assert count(engine, "biopsy_location") == cores == len(by_code[(fp.RADFED, fp.BIOPSY_LOCATION)])
    sampled = [o for o in observations if "valueSampledData" in o]
    assert len(sampled) == 2 * truth["realised"]["wearables"]["sessions"]
    sw = tables["signal_window"]
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(sw.c.n))).scalar_one() == sum(len(o["valueSampledData"]["data"].split()) for o in sampled)
        hr = conn.execute(select(func.avg(sw.c.mean)).where(sw.c.signal_source_value == fp.HEART_RATE)).scalar_one()
    samples = [float(x) for o in sampled if code(o) == (fp.LOINC, fp.HEART_RATE) for x in o["valueSampledData"]["data"].split()]
    assert hr == pytest.approx(sum(samples) / len(samples), rel=1e-12)  # equal 60-sample windows: mean of means
    # the export rounds beats/min to integers: the planted session means survive to within that rounding
    assert abs(hr - truth["realised"]["wearables"]["hr_mean_sum"] / truth["realised"]["wearables"]["sessions"]) < 0.5
    labs = [o for o in observations if o.get("category", [{}])[0].get("coding", [{}])[0].get("code") == "laboratory"
            and "valueQuantity" in o
            and code(o)[0] != fp.RADFED]
    # + one measurement per image feature (MI-CDM) and per variant (OMOP Genomic), each linked
    m, f, v = tables["measurement"], tables["image_feature"], tables["variant_occurrence"]
    assert count(engine, "measurement") == len(labs) + len(ctdna) + len(features) + count(engine, "variant_occurrence")
    assert count(engine, "measurement", m.c.measurement_id.in_(select(f.c.image_feature_event_id))) == len(features)
    assert count(engine, "measurement", m.c.measurement_id.in_(select(v.c.measurement_id))) == count(engine, "variant_occurrence")


def _count(engine, cohort) -> int | None:
    response = run_request(engine, None, {"spec": {"cohort": cohort, "analysis": {"type": "count"}}})
    assert response["status"] == "ok", response
    return response["result"]["n"]


def _subjects(resources) -> set[str]:
    return {r["subject"]["reference"] for r in resources}


def test_planted_facts_are_queryable_with_real_specs(site_db):
    engine, truth, res = site_db
    observations = res["Observation"]
    realised = truth["realised"]
    mdm2 = sum(realised[k].get("mdm2_amp", 0) for k in ("liposarcoma/ALT", "liposarcoma/myxoid") if k in realised)
    assert mdm2 >= 5  # above the default disclosure minimum, so the count is released
    assert _count(engine, {"index": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}}) == mdm2
    adc_low = _subjects(o for o in observations if code(o) == (fp.RADFED, "adc_mean") and o["valueQuantity"]["value"] < 1000)
    assert len(adc_low) >= 5
    assert _count(engine, {"index": {"kind": "image_feature", "code": "RADFED:adc_mean", "value": {"max": 999.9999}}}) == len(adc_low)
    detected = _subjects(o for o in observations if code(o) == (fp.RADFED, fp.CTDNA_DETECTED)
                         and o["valueCodeableConcept"]["coding"][0]["code"] == "LA11882-0")
    assert _count(engine, {"index": {"kind": "ctdna", "detected": True}}) == len(detected) >= 5
    progressed = _subjects(o for o in observations if code(o) == (fp.LOINC, fp.CANCER_DISEASE_STATUS)
                           and o["valueCodeableConcept"]["coding"][0]["code"] == fp.DISEASE_WORSENED)
    assert _count(engine, {"index": {"kind": "episode", "codes": [truth["query_references"]["disease_progression"]]}}) \
        == len(progressed) >= 5
    plasma = {s["id"] for s in res["Specimen"] if s["type"]["coding"][0]["code"] == fp.PLASMA_SPECIMEN}
    ctdna_egfr = _subjects(o for o in observations if code(o) == (fp.LOINC, fp.VARIANT_ASSESSMENT)
                           and o["specimen"]["reference"].split("/")[1] in plasma
                           and o["component"][0]["valueCodeableConcept"]["coding"][0]["display"] == "EGFR")
    assert _count(engine, {"index": {"kind": "variant", "gene": "EGFR", "ctdna": True}}) == len(ctdna_egfr) >= 5
    v, c = tables["variant_occurrence"], tables["ctdna_result"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(c.c.max_vaf.isnot(None))).scalar_one() > 0
        assert conn.execute(select(func.count()).where(v.c.is_ctdna, v.c.target_gene1_symbol != "EGFR",
                                                       v.c.variant_type != "loss")).scalar_one() == 0


# -- end to end through the FHIR ingest engine ---------------------------------------------------------------------

def _egfr_subjects(res, on_plasma: bool) -> set[str]:
    plasma = {s["id"] for s in res["Specimen"] if s["type"]["coding"][0]["code"] == fp.PLASMA_SPECIMEN}
    return _subjects(o for o in res["Observation"] if code(o) == (fp.LOINC, fp.VARIANT_ASSESSMENT)
                     and (o["specimen"]["reference"].split("/")[1] in plasma) == on_plasma
                     and o["component"][0]["valueCodeableConcept"]["coding"][0]["display"] == "EGFR")


def test_generated_site_through_the_ingest_engine_is_queryable(any_cdm, site):
    from node.ingest.engine import ingest_paths

    truth, res, folder = site
    summary = ingest_paths(any_cdm, [folder])
    assert not summary.quarantined, summary.quarantined
    assert summary.by_type["Observation"]["loaded"] == len(res["Observation"])
    realised = truth["realised"]
    mdm2 = sum(realised[k].get("mdm2_amp", 0) for k in ("liposarcoma/ALT", "liposarcoma/myxoid") if k in realised)
    assert _count(any_cdm, {"index": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}}) == mdm2
    ependymoma = list(truth["query_references"]["ependymoma_subtype"].values())
    adc_low = _subjects(o for o in res["Observation"] if code(o) == (fp.RADFED, "adc_mean") and o["valueQuantity"]["value"] < 1000)
    assert _count(any_cdm, {"index": {"kind": "condition", "codes": ependymoma}, "inclusion": [
        {"kind": "image_feature", "code": "RADFED:adc_mean", "value": {"max": 999.9999}, "modality": "MR",
         "window": {"start": -30, "end": 30}}]}) == len(adc_low) >= 5
    detected = _subjects(o for o in res["Observation"] if code(o) == (fp.RADFED, fp.CTDNA_DETECTED)
                         and o["valueCodeableConcept"]["coding"][0]["code"] == "LA11882-0")
    assert _count(any_cdm, {"index": {"kind": "ctdna", "detected": True}}) == len(detected) >= 5
    for on_plasma in (True, False):
        expected = _egfr_subjects(res, on_plasma)
        assert _count(any_cdm, {"index": {"kind": "variant", "gene": "EGFR", "ctdna": on_plasma}}) == len(expected) >= 5
    draws = realised["lung"]["ctdna_draws"] + sum(v["scans"] for k, v in realised.items() if k.startswith("nf1/"))
    c = tables["ctdna_result"]
    assert count(any_cdm, "ctdna_result") == draws and count(any_cdm, "ctdna_result", c.c.detected.is_(None)) == 0
    assert count(any_cdm, "ctdna_result", c.c.max_vaf.isnot(None)) > 0
    cores = sum(v["cores"] for k, v in realised.items() if k.startswith("glioma_habitat/label/"))
    assert count(any_cdm, "biopsy_location") == cores
    assert count(any_cdm, "signal_window") == sum(
        math.ceil(len(o["valueSampledData"]["data"].split()) * o["valueSampledData"]["period"] / 60000)
        for o in res["Observation"] if "valueSampledData" in o) > 0
    again = ingest_paths(any_cdm, [folder])  # idempotent: nothing rewritten
    assert again.by_type["Observation"]["unchanged"] == len(res["Observation"])


def _export(folder: Path, *resources) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    by_type = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(orjson.dumps(r))
    for resource_type, lines in by_type.items():
        (folder / f"{resource_type}.000.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def _imaging_study(rid, study_uid, series_uid, description):
    return {"resourceType": "ImagingStudy", "id": rid, "status": "available", "subject": {"reference": "Patient/pt1"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}], "started": "2026-03-01T10:15:00Z",
            "series": [{"uid": series_uid, "number": 1, "modality": {"system": fp.DICOM_DCM, "code": "CT"},
                        "description": description, "numberOfInstances": 99,
                        "bodySite": {"system": fp.SNOMED, "code": "68367000"}}]}


def test_imaging_study_and_dicom_share_the_series_row_whichever_comes_first(sqlite_cdm, tmp_path):
    from node.dicom.index import index_paths
    from node.ingest.engine import ingest_paths
    from test_dicom_fixtures import make_study

    patient = {"resourceType": "Patient", "id": "pt1", "gender": "female", "birthDate": "1970-01-01",
               "identifier": [{"system": fp.DEFAULT_MRN_SYSTEM, "value": "MRN001"}]}
    ingest_paths(sqlite_cdm, [_export(tmp_path / "patient", patient)])
    dicom_first, fhir_first = make_study(tmp_path / "a", seed=0), make_study(tmp_path / "b", seed=1)
    index_paths(sqlite_cdm, [tmp_path / "a"])
    feature = obs((fp.RADFED, "suv_max"), id="f1", subject={"reference": "Patient/pt1"}, effectiveDateTime="2026-03-01",
                  valueQuantity=qty(6.1, "{SUV}"),
                  component=[comp((fp.DICOM_DCM, fp.SERIES_INSTANCE_UID), valueString=dicom_first["ct"])])
    summary = ingest_paths(sqlite_cdm, [_export(tmp_path / "fhir", feature,
                                                _imaging_study("s1", dicom_first["study"], dicom_first["ct"], "from FHIR"),
                                                _imaging_study("s2", fhir_first["study"], fhir_first["ct"], "from FHIR"))])
    assert not summary.quarantined
    index_paths(sqlite_cdm, [tmp_path / "b"])
    io = tables["image_occurrence"]
    with sqlite_cdm.connect() as conn:
        rows = {r["image_series_uid"]: r for r in conn.execute(select(io)).mappings()}
    a, b = rows[dicom_first["ct"]], rows[fhir_first["ct"]]
    # DICOM first: the ImagingStudy changes nothing DICOM set
    assert (a["image_source"], a["instance_count"], a["series_description"]) == ("file", 8, "CT test series")
    assert a["local_path"] == str(tmp_path / "a" / "ct") and a["manufacturer"] == "radfed-test"
    # FHIR first: DICOM fills what only it knows and recounts the instances, the ImagingStudy's values stay
    assert (b["image_source"], b["series_description"], b["instance_count"]) == ("fhir", "from FHIR", 8)
    assert b["local_path"] == str(tmp_path / "b" / "ct") and b["manufacturer"] == "radfed-test"
    assert a["person_id"] == b["person_id"] == stable_id("fhir", "Patient", "pt1")
    assert a["anatomic_site_source_value"] == b["anatomic_site_source_value"] == "THIGH"
    # the feature the FHIR Observation put on the DICOM series is found by modality
    assert count(sqlite_cdm, "image_feature", tables["image_feature"].c.image_occurrence_id == a["image_occurrence_id"]) == 1
