"""One patient's generation context: its random stream, ids, dates, and where its output goes.

A cohort function (:mod:`node.synth.cohorts`) gets a :class:`PatientContext` and writes through it;
nothing is kept after the patient is done (streaming).  Ids and UIDs are derived from
(seed, site, patient index, purpose), so a patient's data are independent of generation order.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

import numpy as np

from node import fhir_profile as fp
from node.synth import resources as R
from node.synth.codes import CodeBook
from node.synth.ground_truth import GroundTruth
from node.synth.ids import dicom_uid, resource_id
from node.synth.sites import Site

#: Observation codes that belong in a genomics DiagnosticReport of their specimen.
_REPORTED = {fp.VARIANT_ASSESSMENT, fp.CTDNA_TUMOUR_FRACTION, fp.CTDNA_DETECTED}

#: Data cut-off of every export (also the Bulk Data transactionTime date).
CUTOFF = dt.date(2025, 6, 30)


class PatientContext:
    def __init__(self, seed: int, site: Site, index: int, rng: np.random.Generator, codebook: CodeBook,
                 emit: Callable[[dict], tuple[str, int]], truth: GroundTruth,
                 imaging: Callable[["PatientContext", dict], None]) -> None:
        self.seed, self.site, self.index, self.rng, self.cb = seed, site, index, rng, codebook
        self._emit, self.truth, self._imaging = emit, truth, imaging
        self._counter = 0
        self._results: dict[str, list[dict]] = {}  # specimen reference -> result references, until reported
        self.mrn = f"{site.index:02d}{index + 1:07d}"
        self.patient_id = self.id("Patient")
        self.subject = {"resourceType": "Patient", "id": self.patient_id}
        self.record: dict = {"site": site.name, "patient_id": self.patient_id, "mrn": self.mrn}

    # ids -----------------------------------------------------------------------------------
    def id(self, kind: str) -> str:
        self._counter += 1
        return resource_id(self.seed, self.site.index, self.index, kind, self._counter)

    def uid(self, *parts: object) -> str:
        return dicom_uid(self.seed, self.site.index, self.index, *parts)

    # output --------------------------------------------------------------------------------
    def emit(self, resource: dict) -> dict:
        self._emit(resource)
        if resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] in _REPORTED:
            self._results.setdefault(resource["specimen"]["reference"], []).append(R.ref(resource))
        return resource

    def report(self, specimen: dict, day: dt.date, panel: str) -> dict:
        """The DiagnosticReport over every Observation made on ``specimen`` so far (Genomics Reporting IG)."""
        results = self._results.pop(f"Specimen/{specimen['id']}", [])
        return self.emit(R.genomics_report(self.id("DiagnosticReport"), self.subject, specimen, results, day, panel, self.cb))

    def imaging(self, spec: dict) -> None:
        """Hand an imaging study description to the DICOM writer (it decides whether to render it)."""
        self._imaging(self, spec)

    def person(self, sex: str, birth: dt.date, deceased: dt.date | None = None) -> dict:
        self.sex, self.birth = sex, birth
        self.record.update(sex=sex, birth_date=birth.isoformat(), deceased=deceased.isoformat() if deceased else None)
        return self.emit(R.patient(self.patient_id, self.mrn, fp.DEFAULT_MRN_SYSTEM, sex, birth, deceased,
                                   f"{self.site.name} hospital"))

    # helpers -------------------------------------------------------------------------------
    def birth_for_age(self, age_years: float, at: dt.date) -> dt.date:
        return at - dt.timedelta(days=int(round(age_years * 365.25)))

    def diagnosis_date(self, earliest: dt.date = dt.date(2017, 1, 1), latest: dt.date = dt.date(2022, 12, 31)) -> dt.date:
        return earliest + dt.timedelta(days=int(self.rng.integers(0, (latest - earliest).days)))

    def sex_draw(self, p_male: float = 0.5) -> str:
        return "male" if self.rng.random() < p_male else "female"

    def labs(self, day: dt.date) -> None:
        """Baseline creatinine and haemoglobin, coded the way this site codes them."""
        male = self.sex == "male"
        for lab, mean, sd in (("creatinine", 0.95 if male else 0.76, 0.15), ("hemoglobin", 14.6 if male else 13.1, 1.1)):
            value = max(0.2, self.rng.normal(mean, sd))
            unit = {"creatinine": "mg/dL", "hemoglobin": "g/dL"}[lab]
            self.emit(R.lab(self.id("Observation"), self.subject, self.site.lab_coding(lab), value, unit, day, self.cb))
            self.truth.add(f"labs/{self.site.name}/{lab}/{self.sex}", "n")
            self.truth.add(f"labs/{self.site.name}/{lab}/{self.sex}", "sum", round(value, 2))

    def lab(self, lab: str, value: float, day: dt.date) -> None:
        """One more lab result (unit from the LOINC table), coded the way this site codes it."""
        unit = {"creatinine": "mg/dL", "hemoglobin": "g/dL", "ldh": "U/L"}[lab]
        self.emit(R.lab(self.id("Observation"), self.subject, self.site.lab_coding(lab), value, unit, day, self.cb))
