"""The FHIR mappers, one module per resource (or Observation kind), and their one table.

A mapper is a plain function ``map_x(resource, ctx) -> list[Row]`` (the contract is
:mod:`node.ingest.contract`); :data:`MAPPERS` says which one maps each resource type, and
:mod:`.observation_dispatch` which one maps each kind of Observation.  Every mapper reads FHIR values
through :mod:`.values` (one date rule, one way to read codes and references).  Where does X become
Y? — the module named after X:

=========================  ======================================================================
FHIR resource              module -> CDM table(s)
=========================  ======================================================================
Patient                    :mod:`.patient` -> person, location, death
Encounter                  :mod:`.encounter` -> visit_occurrence / visit_detail
Condition                  :mod:`.condition` -> condition_occurrence, episode
Procedure                  :mod:`.procedure` -> procedure_occurrence
Specimen                   :mod:`.specimen` -> specimen
Device                     :mod:`.device` -> device_exposure
AllergyIntolerance         :mod:`.allergy` -> observation
Medication*, Immunization  :mod:`.medication` -> drug_exposure
Organization, Location,    :mod:`.administrative` -> care_site, location, provider
Practitioner
ImagingStudy               :mod:`.imaging_study` -> image_occurrence
Observation                :mod:`.observation_dispatch` -> :mod:`.observation` (measurement /
                           observation), :mod:`.variant`, :mod:`.ctdna`, :mod:`.image_feature`,
                           :mod:`.biopsy_location`, :mod:`.sampled_data`, :mod:`.disease_status`
DiagnosticReport           :mod:`.diagnostic_report` -> its contained results, conclusion codes,
                           :mod:`.note` (its presentedForm: the report text)
DocumentReference          :mod:`.note` -> note
=========================  ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

from node.ingest.contract import Mapper
from node.ingest.mappers.administrative import map_location, map_organization, map_practitioner
from node.ingest.mappers.allergy import map_allergy
from node.ingest.mappers.condition import map_condition
from node.ingest.mappers.ctdna import reconcile_ctdna
from node.ingest.mappers.device import map_device
from node.ingest.mappers.diagnostic_report import map_diagnostic_report
from node.ingest.mappers.encounter import map_encounter
from node.ingest.mappers.imaging_study import map_imaging_study
from node.ingest.mappers.medication import (
    map_immunization, map_medication_administration, map_medication_request, map_medication_statement,
)
from node.ingest.mappers.note import map_document_reference
from node.ingest.mappers.observation_dispatch import map_observation
from node.ingest.mappers.patient import map_patient
from node.ingest.mappers.procedure import map_procedure
from node.ingest.mappers.specimen import map_specimen

#: resourceType -> its mapper.
MAPPERS: dict[str, Mapper] = {
    "Patient": map_patient,
    "Encounter": map_encounter,
    "Condition": map_condition,
    "Procedure": map_procedure,
    "Specimen": map_specimen,
    "Device": map_device,
    "AllergyIntolerance": map_allergy,
    "MedicationRequest": map_medication_request,
    "MedicationStatement": map_medication_statement,
    "MedicationAdministration": map_medication_administration,
    "Immunization": map_immunization,
    "Organization": map_organization,
    "Location": map_location,
    "Practitioner": map_practitioner,
    "ImagingStudy": map_imaging_study,
    "Observation": map_observation,
    "DiagnosticReport": map_diagnostic_report,
    "DocumentReference": map_document_reference,
}

#: Set-based steps run after every load over the persons it touched (``None``: everyone), in order:
#: facts that span resources loaded separately (a ctDNA variant's plasma Specimen).
AFTER_LOAD: tuple[Callable[[Connection, list[int] | None], dict], ...] = (reconcile_ctdna,)
