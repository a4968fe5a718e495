"""How the synthetic sites differ, the way real hospitals do.

Sizes and case mix differ (a paediatric neuro-oncology centre sees ependymoma, a sarcoma centre
liposarcoma); some sites send labs under LOINC, others under their own lab code system that maps to
LOINC only through the site's mapping file (an OMOP SOURCE_TO_CONCEPT_MAP CSV, loadable with
``radfed-node vocab load-map``); DICOM comes from different vendors with different transfer syntaxes
and tag habits; registration of biopsy coordinates is better at some sites than at others.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from cdm.vocabulary import vocabulary_for_uri
from node import fhir_profile as fp
from node.synth import codes as C

COHORTS = ("ependymoma", "liposarcoma", "nf1", "lung", "glioma_habitat", "rare")

#: Local lab codes a site may use instead of LOINC.
LOCAL_LAB_CODES = {"creatinine": ("CREA", "Kreatinin i serum"), "hemoglobin": ("HGB", "Haemoglobin, blod"),
                   "ldh": ("LDH-S", "Laktatdehydrogenase, serum")}

_TEMPLATES = [
    # A university hospital with paediatric neuro-oncology; LOINC throughout; Siemens scanners.
    dict(kind="university", weight=1.4,
         mix={"ependymoma": 0.24, "liposarcoma": 0.10, "nf1": 0.14, "lung": 0.24, "glioma_habitat": 0.12, "rare": 0.16},
         local_labs=(), vendor="SIEMENS", registration_error_mm=1.5, wearable_rate=0.4, lung_contours="SEG"),
    # A sarcoma referral centre with its own lab codes; GE scanners, implicit VR little endian.
    dict(kind="sarcoma_centre", weight=1.0,
         mix={"ependymoma": 0.10, "liposarcoma": 0.32, "nf1": 0.18, "lung": 0.20, "glioma_habitat": 0.08, "rare": 0.12},
         local_labs=("creatinine", "hemoglobin", "ldh"), vendor="GE MEDICAL SYSTEMS", registration_error_mm=3.0,
         wearable_rate=0.25, lung_contours="SEG"),
    # A thoracic oncology centre; creatinine under a local code, haemoglobin under LOINC; Philips;
    # its lung lesions are contoured in the radiotherapy planning system (RTSTRUCT, not SEG).
    dict(kind="thoracic_centre", weight=0.7,
         mix={"ependymoma": 0.12, "liposarcoma": 0.12, "nf1": 0.10, "lung": 0.40, "glioma_habitat": 0.10, "rare": 0.16},
         local_labs=("creatinine",), vendor="Philips", registration_error_mm=2.2, wearable_rate=0.5,
         lung_contours="RTSTRUCT"),
]

VENDORS = {
    "SIEMENS": dict(model="MAGNETOM Skyra", ct_model="SOMATOM Force", transfer_syntax="1.2.840.10008.1.2.1",
                    ct_intercept=-1024.0, station="SIEMENS-MR1"),
    "GE MEDICAL SYSTEMS": dict(model="SIGNA Premier", ct_model="Revolution CT", transfer_syntax="1.2.840.10008.1.2",
                               ct_intercept=-1024.0, station="GEMR01"),
    "Philips": dict(model="Ingenia", ct_model="IQon Spectral CT", transfer_syntax="1.2.840.10008.1.2.1",
                    ct_intercept=-1000.0, station="PHILIPS-CT3"),
}


@dataclass(frozen=True)
class Site:
    index: int  # 1-based
    kind: str
    weight: float
    mix: dict
    local_labs: tuple
    vendor: str
    registration_error_mm: float
    wearable_rate: float
    lung_contours: str = "SEG"  # SEG or RTSTRUCT for the lung CT target lesions
    vendor_info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"site-{self.index}"

    @property
    def base_url(self) -> str:
        return f"https://{self.name}.example.org/fhir"

    @property
    def lab_system(self) -> str:
        """The site's own lab code system URI (for labs not sent under LOINC)."""
        return f"https://{self.name}.example.org/fhir/CodeSystem/lab-codes"

    @property
    def lab_vocabulary_id(self) -> str:
        """The vocabulary_id the FHIR ingest derives from :attr:`lab_system`."""
        return vocabulary_for_uri(self.lab_system)

    def lab_coding(self, lab: str) -> tuple[str, str, str]:
        if lab in self.local_labs:
            code, display = LOCAL_LAB_CODES[lab]
            return (self.lab_system, code, display)
        loinc, display, _ = C.LABS[lab]
        return (fp.LOINC, loinc, display)

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "case_mix": self.mix, "vendor": self.vendor,
            "vendor_model": self.vendor_info.get("model"), "transfer_syntax": self.vendor_info.get("transfer_syntax"),
            "labs_local": list(self.local_labs), "lab_system": self.lab_system if self.local_labs else None,
            "lab_vocabulary_id": self.lab_vocabulary_id if self.local_labs else None,
            "registration_error_mm": self.registration_error_mm, "wearable_rate": self.wearable_rate,
            "lung_contours": self.lung_contours,
        }


def make_sites(n: int) -> list[Site]:
    sites = []
    for i in range(1, n + 1):
        t = _TEMPLATES[(i - 1) % len(_TEMPLATES)]
        sites.append(Site(index=i, vendor_info=VENDORS[t["vendor"]], **t))
    return sites


def allocate(sites: list[Site], total: int) -> list[int]:
    """Patients per site, proportional to site weight (largest remainder, every site at least 1)."""
    weights = [s.weight for s in sites]
    raw = [total * w / sum(weights) for w in weights]
    counts = [max(1, int(r)) for r in raw]
    order = sorted(range(len(sites)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    k = 0
    while sum(counts) < total:
        counts[order[k % len(order)]] += 1
        k += 1
    return counts


def write_source_to_concept_map(site: Site, path: Path) -> int:
    """The site's SOURCE_TO_CONCEPT_MAP for its local lab codes (``target`` as ``LOINC:code``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["source_code", "source_vocabulary_id", "source_code_description", "target", "target_vocabulary_id"])
        for lab in site.local_labs:
            code, display = LOCAL_LAB_CODES[lab]
            w.writerow([code, site.lab_vocabulary_id, display, f"LOINC:{C.LABS[lab][0]}", "LOINC"])
    return len(site.local_labs)
