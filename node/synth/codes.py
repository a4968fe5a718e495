"""Every code the generator writes, and the book that records which ones it actually used.

Codes are real where their meaning is certain — LOINC (labs, Genomics Reporting IG components),
SNOMED CT, ICD-O-3 morphology, HGNC gene ids, HPO phenotypes, HGVS on RefSeq transcripts — and
otherwise come from a clearly named local code system under ``https://radfed.org/fhir/CodeSystem/``.
The :class:`CodeBook` collects each (system, code, display) as resources are built, so
``ground_truth.json`` lists exactly the codes present in the export.
"""

from __future__ import annotations

from node import fhir_profile as fp

ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
HPO = "http://human-phenotype-ontology.org"
HGVS = "http://varnomen.hgvs.org"
DICOM_UID = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: Local code system for diagnoses without a certain standard code (the synthetic rare diseases).
SYNTH_DIAGNOSIS = "https://radfed.org/fhir/CodeSystem/synth-diagnosis"
#: Local code system for drugs (no RxNorm code is asserted by the generator).
SYNTH_DRUG = "https://radfed.org/fhir/CodeSystem/synth-drug"
#: Device types for wearables.
SYNTH_DEVICE = "https://radfed.org/fhir/CodeSystem/synth-device"

# Diagnoses: ICD-O-3 morphology codes (behaviour after the slash).
EPENDYMOMA = (ICDO3, "9391/3", "Ependymoma, NOS")
ALT = (ICDO3, "8850/1", "Atypical lipomatous tumor")
MYXOID_LPS = (ICDO3, "8852/3", "Myxoid liposarcoma")
PLEXIFORM_NF = (ICDO3, "9550/0", "Plexiform neurofibroma")
MPNST = (ICDO3, "9540/3", "Malignant peripheral nerve sheath tumor")
LUNG_ADENO = (ICDO3, "8140/3", "Adenocarcinoma, NOS")
GLIOBLASTOMA = (ICDO3, "9440/3", "Glioblastoma")
NF1_DISORDER = (fp.SNOMED, "92824003", "Neurofibromatosis type 1")
# Molecular groups of posterior fossa ependymoma (RADFED project concepts, cdm/data/radfed_concepts.csv).
PFA = (fp.RADFED, "ependymoma_pfa", "Posterior fossa ependymoma group A")
PFB = (fp.RADFED, "ependymoma_pfb", "Posterior fossa ependymoma group B")

# Genes (HGNC ids).
GENES = {
    "MDM2": "HGNC:6973",
    "CDK4": "HGNC:1773",
    "DDIT3": "HGNC:2726",
    "FUS": "HGNC:4010",
    "NF1": "HGNC:7765",
    "CDKN2A": "HGNC:1787",
    "TP53": "HGNC:11998",
    "SUZ12": "HGNC:17101",
    "EGFR": "HGNC:3236",
}
EGFR_TRANSCRIPT = "NM_005228.5"
#: EGFR variants on NM_005228.5 (c., p.): sensitising drivers and resistance mutations.
EGFR_L858R = (f"{EGFR_TRANSCRIPT}:c.2573T>G", "p.Leu858Arg", fp.SO_SNV)
EGFR_EX19DEL = (f"{EGFR_TRANSCRIPT}:c.2235_2249del", "p.Glu746_Ala750del", fp.SO_INDEL)
EGFR_T790M = (f"{EGFR_TRANSCRIPT}:c.2369C>T", "p.Thr790Met", fp.SO_SNV)
EGFR_C797S = (f"{EGFR_TRANSCRIPT}:c.2390G>C", "p.Cys797Ser", fp.SO_SNV)

# Labs: the same analyte may be sent under LOINC or a site's local code (sites.py).
LABS = {
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
    "hemoglobin": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
    "ldh": ("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "U/L"),
}

# Anatomy, procedures, specimens (SNOMED CT).
BODY_BRAIN = (fp.SNOMED, "12738006", "Brain structure")
BODY_LUNG = (fp.SNOMED, "39607008", "Lung structure")
BODY_THIGH = (fp.SNOMED, "68367000", "Thigh structure")
BIOPSY = (fp.SNOMED, "86273004", "Biopsy")
TISSUE_SPECIMEN = (fp.SNOMED, "119376003", "Tissue specimen")
BLOOD_SPECIMEN = (fp.SNOMED, "119297000", "Blood specimen")
PLASMA = (fp.SNOMED, fp.PLASMA_SPECIMEN, "Plasma specimen")
PRESENT = (fp.LOINC, "LA9633-4", "Present")
DETECTED = (fp.LOINC, "LA11882-0", "Detected")
NOT_DETECTED = (fp.LOINC, "LA11883-8", "Not detected")
SOMATIC = (fp.LOINC, fp.SOMATIC, "Somatic")
GERMLINE = (fp.LOINC, fp.GERMLINE, "Germline")
DISEASE_STATUS = {
    "progression": (fp.SNOMED, fp.DISEASE_WORSENED, "Worsening"),
    "stable": (fp.SNOMED, fp.DISEASE_STABLE, "Stable"),
    "response": (fp.SNOMED, fp.DISEASE_IMPROVED, "Improving"),
}
HABITATS = ("habitat_hypercellular", "habitat_necrotic", "habitat_oedema", "habitat_enhancing", "habitat_low_cellularity")
OSIMERTINIB = (SYNTH_DRUG, "osimertinib", "Osimertinib 80 mg oral tablet")
WEARABLE = (SYNTH_DEVICE, "wrist-wearable", "Wrist-worn heart-rate and activity tracker")

#: SOP Class UIDs the DICOM writer emits (DICOM PS3.4 Annex B).
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",
}


class CodeBook:
    """The set of (system, code, display) written so far; bounded by the size of the code tables."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}

    def coding(self, system: str, code: str, display: str | None = None) -> dict:
        self._seen.setdefault((system, code), display or "")
        out = {"system": system, "code": code}
        if display:
            out["display"] = display
        return out

    def concept(self, triple: tuple[str, str, str], text: str | None = None) -> dict:
        out = {"coding": [self.coding(*triple)]}
        if text:
            out["text"] = text
        return out

    def listing(self) -> list[dict]:
        return [{"system": s, "code": c, "display": d} for (s, c), d in sorted(self._seen.items())]
