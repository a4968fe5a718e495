"""radfed's radiogenomic extensions to OMOP CDM v5.4.

Each table follows the OHDSI working group that owns the domain where one exists:

* imaging — the Medical Imaging CDM (MI-CDM, Park et al., JDI 2024): ``image_occurrence`` (one row
  per DICOM series) and ``image_feature`` (one row per quantitative feature of a series/ROI).
* genomics — the Genomic CDM (G-CDM, Shin et al., 2019 and the OHDSI Genomic WG):
  ``variant_occurrence`` and ``variant_annotation``.
* liquid biopsy — ``ctdna_result``: one row per ctDNA assay result (tumour fraction, detected), whose
  per-variant VAFs are ``variant_occurrence`` rows sharing its specimen.
* spatial biopsy — ``biopsy_location``: where a biopsy was taken in image coordinates, how uncertain
  that registration is, and the habitat label the imaging gives that point.
* high-frequency signals — ``signal_window``: windowed summaries of wearable streams (the raw
  samples never go to ``measurement``).

and three bookkeeping tables the ingest paths share: ``quarantine`` (bad input, kept with its
reason, never dropped), ``source_record`` (which source resource produced which CDM row, with a
content hash, so a re-run is idempotent and an updated resource replaces its rows; a resource that
maps to no row has one record naming none, so a re-run skips it too) and
``pending_reference`` (a reference to a resource not loaded yet: the column is filled when it arrives).

Every column carries its documentation as ``doc=`` (the column comment on PostgreSQL).
"""

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from cdm.columns import ID, col

CONCEPT = ("concept", "concept_id")
PERSON = ("person", "person_id")


def _key(table: str, doc: str) -> Column:
    """The table's own ``<table>_id`` primary key: deterministic (cdm/ids.py), never generated."""
    return col(f"{table}_id", ID, primary_key=True, doc=doc)


def _person(doc: str) -> Column:
    """``person_id``: every clinical extension row belongs to one person."""
    return col("person_id", ID, required=True, references=PERSON, doc=doc)


def _row_of(table: str, doc: str, *, name: str | None = None, required: bool = False) -> Column:
    """An id pointing at a row of ``table`` (its ``<table>_id``); ``name`` when the column is not called
    so (a second specimen)."""
    return col(name or f"{table}_id", ID, required=required, references=(table, f"{table}_id"), doc=doc)


def _concept(name: str, doc: str, *, required: bool = False) -> Column:
    """A ``..._concept_id`` column: the id of an OMOP ``concept``."""
    return col(name, Integer, required=required, references=CONCEPT, doc=doc)


def define_extension_tables(metadata: MetaData) -> None:
    """Add radfed's extension and bookkeeping tables to ``metadata``."""

    Table(
        "image_occurrence", metadata,
        _key("image_occurrence", "Deterministic id from the SeriesInstanceUID."),
        _person("Matched from PatientID."),
        _row_of("procedure_occurrence", "The imaging procedure (MI-CDM: every series belongs to a procedure)."),
        _row_of("visit_occurrence", "The visit the study was acquired in, when known."),
        _concept("anatomic_site_concept_id",
                 "Anatomic site from BodyPartExamined (0010,0015) / AnatomicRegionSequence."),
        col("anatomic_site_source_value", String(64), doc="BodyPartExamined as sent."),
        col("wadors_uri", String(1000), doc="DICOMweb (WADO-RS) URI of the series, when served."),
        col("local_path", String(1000), doc="Folder or file holding the series at the node."),
        col("image_occurrence_date", Date, required=True, doc="SeriesDate, else StudyDate."),
        col("image_occurrence_datetime", DateTime, doc="SeriesDate+SeriesTime when present."),
        col("image_study_uid", String(250), required=True, doc="StudyInstanceUID (0020,000D)."),
        col("image_series_uid", String(250), required=True, doc="SeriesInstanceUID (0020,000E)."),
        _concept("modality_concept_id", "Modality (0008,0060) as a DICOM-vocabulary concept.", required=True),
        col("modality_source_value", String(16), doc="Modality as sent (CT, MR, PT, SEG, RTSTRUCT...)."),
        col("sop_class_uid", String(64), doc="SOPClassUID of the series' instances."),
        col("series_description", String(255), doc="SeriesDescription (0008,103E)."),
        col("manufacturer", String(255), doc="Manufacturer (0008,0070): sites mix vendors."),
        col("instance_count", Integer, doc="Instances indexed for this series."),
        col("referenced_series_uid", String(250),
            doc="For SEG/RTSTRUCT/parametric maps: the image series they were derived from."),
        col("image_source", String(20), doc="How it arrived: file, scp, pull or fhir (ImagingStudy)."),
    )
    Index("idx_image_occurrence_person", metadata.tables["image_occurrence"].c.person_id)
    Index("idx_image_occurrence_series", metadata.tables["image_occurrence"].c.image_series_uid, unique=True)

    Table(
        "image_feature", metadata,
        _key("image_feature", "Deterministic id from (series, ROI, feature, algorithm)."),
        _person("The person whose image it is."),
        _row_of("image_occurrence", "The image series the feature was measured on.", required=True),
        _concept("image_feature_event_field_concept_id",
                 "MI-CDM: the table of a linked event (e.g. measurement), 0 when none."),
        col("image_feature_event_id", ID, doc="MI-CDM: id of the linked event row (e.g. measurement_id)."),
        _concept("image_feature_concept_id",
                 "What was measured (RADFED project concept, e.g. ADC mean, SUVmax, fat fraction).", required=True),
        col("image_feature_source_value", String(255), required=True,
            doc="The feature's name as produced, e.g. pyradiomics 'original_firstorder_Mean'."),
        _concept("image_feature_type_concept_id",
                 "Provenance: radiomic extraction, parametric-map statistic, reader annotation.", required=True),
        _concept("image_finding_concept_id", "MI-CDM: the finding the ROI depicts."),
        col("image_finding_id", ID, doc="MI-CDM: groups features of one finding (lesion) across series."),
        _concept("anatomic_site_concept_id", "Site of the ROI."),
        col("roi_label", String(255), doc="Segment label (SEG SegmentLabel / RTSTRUCT ROIName)."),
        col("value_as_number", Float, doc="The feature value; kept here so imaging criteria need no join."),
        _concept("value_as_concept_id", "A categorical feature (e.g. calcification present, target sign)."),
        _concept("unit_concept_id", "UCUM unit concept of value_as_number."),
        col("unit_source_value", String(50), doc="UCUM unit as produced, e.g. 'um2/s', 'g/ml', '%'."),
        col("alg_system", String(255), required=True, doc="Producing algorithm, e.g. 'pyradiomics'."),
        col("alg_version", String(50), doc="Its version."),
        col("alg_datetime", DateTime, doc="When it ran."),
    )
    Index("idx_image_feature_person", metadata.tables["image_feature"].c.person_id)
    Index("idx_image_feature_concept", metadata.tables["image_feature"].c.image_feature_concept_id)

    Table(
        "variant_occurrence", metadata,
        _key("variant_occurrence", "Deterministic id from the source resource."),
        _person("The patient."),
        _row_of("procedure_occurrence", "The sequencing procedure."),
        _row_of("specimen", "Tumour tissue, or plasma for ctDNA (then ctdna_result shares this specimen)."),
        _row_of("specimen", "Matched normal, if any.", name="reference_specimen_id"),
        _row_of("measurement", "G-CDM link to the measurement row of the test result, when written."),
        col("variant_date", Date, required=True, doc="Specimen collection date, else report date."),
        _concept("target_gene1_concept_id", "HGNC gene concept."),
        col("target_gene1_symbol", String(50), doc="HGNC symbol, e.g. MDM2."),
        _concept("target_gene2_concept_id", "Fusion partner gene concept."),
        col("target_gene2_symbol", String(50), doc="Fusion partner, e.g. DDIT3 in FUS::DDIT3."),
        col("variant_type", String(20), required=True,
            doc="snv, indel, cnv (amplification/deletion), fusion, or loss (biallelic/LOH loss)."),
        col("reference_sequence", String(50), doc="Transcript/genomic reference, e.g. NM_000267.3."),
        col("rs_id", String(50), doc="dbSNP id."),
        col("chromosome", String(10), doc="Chromosome, e.g. chr12."),
        col("start_position", ID, doc="Genomic start (1-based)."),
        col("reference_allele", String(255), doc="Reference allele (VCF REF)."),
        col("alternate_allele", String(255), doc="Alternate allele (VCF ALT)."),
        col("hgvs_c", String(255), doc="HGVS cDNA notation."),
        col("hgvs_p", String(255), doc="HGVS protein notation."),
        col("allele_frequency", Float, doc="Variant allele fraction (0-1): tumour VAF or ctDNA VAF."),
        col("read_depth", Integer, doc="Reads covering the position."),
        col("copy_number", Float, doc="Absolute copy number for CNVs (e.g. 18 for MDM2 amplification)."),
        col("copy_number_change", String(20), doc="amplification, gain, loss, homozygous deletion."),
        col("fusion_breakpoint", String(255), doc="Fusion breakpoint description, e.g. FUS exon 5::DDIT3 exon 2."),
        col("genetic_origin", String(20), doc="somatic or germline."),
        col("genotype", String(20), doc="heterozygous, homozygous, hemizygous."),
        col("is_ctdna", Boolean, required=True, doc="True when detected in circulating tumour DNA."),
        col("variant_source_value", String(255), doc="The code/name as sent."),
    )
    Index("idx_variant_person", metadata.tables["variant_occurrence"].c.person_id)
    Index("idx_variant_gene", metadata.tables["variant_occurrence"].c.target_gene1_symbol)

    Table(
        "variant_annotation", metadata,
        _key("variant_annotation", "Deterministic id from (variant, field, source)."),
        _row_of("variant_occurrence", "The annotated variant.", required=True),
        col("annotation_field", String(255), required=True, doc="e.g. clinical_significance, oncokb_level."),
        col("value_as_string", String(1000), doc="Textual annotation value."),
        col("value_as_number", Float, doc="Numeric annotation value (e.g. a population frequency)."),
        _concept("value_as_concept_id", "Coded annotation value."),
        col("annotation_source", String(255), doc="Knowledge base and version (ClinVar 2026-10, ...)."),
    )

    Table(
        "ctdna_result", metadata,
        _key("ctdna_result", "Deterministic id from the source result."),
        _person("The patient."),
        _row_of("specimen", "The plasma specimen."),
        _row_of("measurement", "The result as a measurement."),
        col("result_date", Date, required=True, doc="Blood draw date."),
        col("assay", String(255), doc="Assay name/version (panel, tumour-informed or not)."),
        col("detected", Boolean, doc="ctDNA detected (molecular residual disease positive)."),
        col("tumour_fraction", Float, doc="Estimated tumour fraction of cfDNA (0-1)."),
        col("max_vaf", Float, doc="Highest somatic VAF in the draw (0-1)."),
        col("mean_vaf", Float, doc="Mean VAF of tracked variants (0-1)."),
    )
    Index("idx_ctdna_person", metadata.tables["ctdna_result"].c.person_id)

    Table(
        "biopsy_location", metadata,
        _key("biopsy_location", "Deterministic id from the biopsy procedure/specimen."),
        _person("The patient."),
        _row_of("procedure_occurrence", "The biopsy procedure."),
        _row_of("specimen", "The core whose genomics are tested."),
        _row_of("image_occurrence", "The (habitat map) series the coordinates refer to."),
        col("frame_of_reference_uid", String(250), doc="DICOM FrameOfReferenceUID of the coordinates."),
        col("x_mm", Float, required=True, doc="Patient-coordinate (LPS) position, mm."),
        col("y_mm", Float, required=True, doc="Patient-coordinate (LPS) y, mm."),
        col("z_mm", Float, required=True, doc="Patient-coordinate (LPS) z, mm."),
        col("registration_error_mm", Float, required=True,
            doc="1-sigma registration uncertainty (isotropic Gaussian), mm."),
        col("habitat_label", String(50), doc="Habitat the imaging assigns at the point, e.g. 'hypercellular'."),
        _concept("habitat_concept_id", "The habitat as a RADFED concept."),
        col("distance_to_border_mm", Float,
            doc="Distance from the point to the nearest other habitat; with the error gives the weight."),
    )

    Table(
        "signal_window", metadata,
        _key("signal_window", "Deterministic id from (device stream, signal, window start)."),
        _person("The wearer."),
        _row_of("device_exposure", "The wearable."),
        _concept("signal_concept_id", "e.g. heart rate (LOINC 8867-4).", required=True),
        col("signal_source_value", String(255), doc="The signal's code as sent."),
        col("window_start_datetime", DateTime, required=True, doc="Start of the window (UTC)."),
        col("window_seconds", Integer, required=True, doc="Window length; samples inside are summarised."),
        col("n", Integer, required=True, doc="Valid samples in the window."),
        col("mean", Float, doc="Mean of the samples in the window."),
        col("sd", Float, doc="Sample standard deviation (n-1)."),
        col("min", Float, doc="Smallest sample."),
        col("max", Float, doc="Largest sample."),
        _concept("unit_concept_id", "UCUM unit concept of the samples."),
        col("unit_source_value", String(50), doc="Unit as sent."),
    )
    Index("idx_signal_window_person", metadata.tables["signal_window"].c.person_id)

    Table(
        "quarantine", metadata,
        _key("quarantine", "Deterministic from (source, file, line, resource)."),
        col("ingest_kind", String(20), required=True, doc="fhir, dicom, genomics, wearables."),
        col("source_file", String(1000), doc="File the input came from."),
        col("source_line", Integer, doc="Line (NDJSON) or entry index (Bundle)."),
        col("resource_type", String(64), doc="FHIR resourceType or DICOM SOP class, when known."),
        col("resource_id", String(255), doc="The resource's own id, when it could be read."),
        col("reason_code", String(40), required=True, doc="Stable machine-readable reason."),
        col("reason", Text, required=True, doc="Human-readable reason."),
        col("payload", LargeBinary, doc="The offending input, byte for byte (nothing is lost)."),
        col("quarantined_at", DateTime, required=True, doc="When it was quarantined (UTC)."),
    )

    Table(
        "source_record", metadata,
        col("source_key", String(400), primary_key=True, doc="(source system, resource type, resource id)."),
        col("cdm_table", String(64), primary_key=True,
            doc="A table the resource wrote a row to; '(no row)' for a resource loaded that maps to none."),
        col("cdm_id", ID, primary_key=True,
            doc="That row's id (one resource may write several rows); 0 with '(no row)'."),
        col("content_hash", String(64), required=True, doc="Hash of the canonical resource; unchanged -> skip."),
        col("loaded_at", DateTime, required=True, doc="When the row was (re)written (UTC)."),
    )
    Index("idx_source_record_row", metadata.tables["source_record"].c.cdm_table,
          metadata.tables["source_record"].c.cdm_id)

    Table(
        "pending_reference", metadata,
        col("target_key", String(400), primary_key=True,
            doc="The source key of the resource referenced but not loaded yet (fhir|Practitioner|id, or "
                "fhir|Practitioner?identifier=system|value)."),
        col("cdm_table", String(64), primary_key=True, doc="The table of the row that holds the reference."),
        col("cdm_id", ID, primary_key=True, doc="That row's id."),
        col("column_name", String(64), primary_key=True, doc="Its column to fill when the target arrives."),
        col("target_table", String(64), required=True, doc="The CDM table the target's row will be in."),
        col("source_key", String(400), required=True, doc="The resource that holds the reference."),
        col("recorded_at", DateTime, required=True, doc="When the reference was first found unresolved (UTC)."),
    )
    Index("idx_pending_reference_source", metadata.tables["pending_reference"].c.source_key)
