"""How radiogenomic facts are expressed in FHIR R4 at a radfed site.

The FHIR ingest (:mod:`node.ingest`) reads, and the synthetic generator (:mod:`node.synth`) writes,
exactly these conventions, so the generator's data exercise the same paths a hospital's export does.
They follow the published implementation guides where one exists:

* genomic variants — HL7 Genomics Reporting IG (STU2/3): an Observation coded LOINC 69548-6
  "Genetic variant assessment" whose components carry the gene (48018-6, HGNC coding), HGVS c./p.
  (48004-6 / 48005-3), allele fraction (81258-6), copy number (82155-3), DNA change type (48019-4,
  Sequence Ontology coding), genomic source class (48002-0, LA6684-0 somatic / LA6683-2 germline).
  A fusion names its two genes as two 48018-6 components, first the 5' partner.
* ctDNA — variant Observations whose ``specimen`` is a plasma / cfDNA Specimen
  (SNOMED 119361006 plasma specimen, or type code ``cfDNA``) are ctDNA variants; tumour fraction and
  detected/not-detected are Observations coded RADFED ``ctdna_tumour_fraction`` /
  ``ctdna_detected`` with that same specimen.
* imaging features — radiology findings as Observations (category ``imaging``) coded with a RADFED
  image-feature concept (``adc_mean``, ``suv_max``, ``fat_fraction``...), ``derivedFrom`` the
  ImagingStudy, the series named by a component coded DCM 112002 "Series Instance UID"
  (valueString), the ROI by component DCM 121071 "Finding" (valueString label).
* disease course — mCODE "Cancer disease status" (LOINC 97509-4) Observations whose value is
  SNOMED 271299001 (worsened: progression), 359746009 (stable), 268910001 (improved: response);
  ``focus`` references the cancer Condition.  They become OMOP ``episode`` rows under the disease
  episode of that Condition.
* spatially mapped biopsies — an Observation coded RADFED ``biopsy_location`` whose ``partOf`` is
  the biopsy Procedure and ``specimen`` the core; components give x/y/z in mm (patient LPS), the
  registration error (1-sigma, mm), the habitat label (valueCodeableConcept, RADFED habitat_*), and
  the distance to the habitat border (mm).  ``derivedFrom`` the ImagingStudy of the habitat map,
  with the series UID component as for image features.
* wearables — Observations with ``valueSampledData`` (LOINC 8867-4 heart rate, 55423-8 step count),
  ``effectivePeriod.start`` the first sample, ``device`` the wearable; summarised into
  ``signal_window`` rows of :data:`WEARABLE_WINDOW_SECONDS`.
* patients — ``person_source_value`` is the identifier whose system is the site's MRN system
  (``[fhir] mrn_system`` in node.toml, default :data:`DEFAULT_MRN_SYSTEM`), else Patient.id; the
  DICOM ingest matches PatientID (0010,0020) against it.
* ids — every CDM row id is ``cdm.ids.stable_id("fhir", resourceType, id[, part])``; an image series
  is always ``stable_id("dicom-series", SeriesInstanceUID)`` whichever of ImagingStudy or DICOM
  arrives first.
"""

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
HGNC = "http://www.genenames.org/geneId"
SEQUENCE_ONTOLOGY = "http://www.sequenceontology.org"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
RADFED = "https://radfed.org/fhir/CodeSystem/radfed"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DEFAULT_MRN_SYSTEM = "urn:radfed:mrn"

# Genomics Reporting IG
VARIANT_ASSESSMENT = "69548-6"
GENE_STUDIED = "48018-6"
HGVS_C = "48004-6"
HGVS_P = "48005-3"
ALLELE_FREQUENCY = "81258-6"
COPY_NUMBER = "82155-3"
DNA_CHANGE_TYPE = "48019-4"
GENOMIC_SOURCE_CLASS = "48002-0"
REF_ALLELE = "69547-8"
ALT_ALLELE = "69551-0"
SOMATIC = "LA6684-0"
GERMLINE = "LA6683-2"
# Sequence Ontology change types
SO_SNV = "SO:0001483"
SO_INDEL = "SO:1000032"
SO_COPY_NUMBER_GAIN = "SO:0001742"  # amplification
SO_COPY_NUMBER_LOSS = "SO:0001743"  # deletion / loss
SO_GENE_FUSION = "SO:0001565"

# Specimens
PLASMA_SPECIMEN = "119361006"
CFDNA_TYPE = "cfDNA"

# RADFED codes (cdm/data/radfed_concepts.csv)
CTDNA_TUMOUR_FRACTION = "ctdna_tumour_fraction"
CTDNA_DETECTED = "ctdna_detected"
BIOPSY_LOCATION = "biopsy_location"
BIOPSY_X, BIOPSY_Y, BIOPSY_Z = "biopsy_x_mm", "biopsy_y_mm", "biopsy_z_mm"
REGISTRATION_ERROR = "registration_error_mm"
HABITAT_LABEL = "habitat_label"
HABITAT_BORDER_DISTANCE = "habitat_border_distance_mm"

# DICOM codes used as Observation components
SERIES_INSTANCE_UID = "112002"
FINDING = "121071"

# mCODE cancer disease status
CANCER_DISEASE_STATUS = "97509-4"
DISEASE_WORSENED = "271299001"
DISEASE_STABLE = "359746009"
DISEASE_IMPROVED = "268910001"
# mCODE ConditionStatusTrendVS (STU 2.1+): SNOMED US extension remission findings
DISEASE_FULL_REMISSION = "550991000124107"
DISEASE_PARTIAL_REMISSION = "551001000124108"

# Wearables
HEART_RATE = "8867-4"
STEP_COUNT = "55423-8"
WEARABLE_WINDOW_SECONDS = 60
