"""Series -> ``image_occurrence``: the one mapping every DICOM way in shares.

A DICOM instance's header (PS3.3 C.7 Patient/Study/Series modules) is reduced to a
:class:`SeriesHeader`; a :class:`SeriesIndexer` collects instances per series and upserts one
``image_occurrence`` row per SeriesInstanceUID, whose id is ``stable_id("dicom-series", uid)`` so a
FHIR ImagingStudy that arrived first names the same row (its missing fields are filled, nothing it
set is overwritten).  Each instance is remembered in ``source_record`` (key ``dicom|<SOPInstanceUID>``)
so re-indexing is idempotent and ``instance_count`` counts distinct instances.

One SOP Instance UID is one instance (PS3.3 C.12.1.1.1), however many files carry it.  The
``source_record`` row keeps the content digest of the copy indexed (:mod:`node.dicom.instance`):
another file with the same digest, or one that holds the same attributes and pixels in another
encoding, is a *duplicate* (counted, nothing written); one with different content is quarantined as
``DUPLICATE_SOP`` with both paths in its reason, and the copy indexed first stays.  Truncated files
never get this far (``TRUNCATED``), so an intact copy is never replaced by a cut one.

Each study is also a PROCEDURE_OCCURRENCE the series link to (MI-CDM makes
``image_occurrence.procedure_occurrence_id`` NOT NULL; :func:`cdm.conformance.imaging_procedure`, the
same row a FHIR ImagingStudy without procedureReference writes).

The visit is the person's visit spanning the acquisition date, when the FHIR load wrote one.
The person is the one whose ``person_source_value`` equals PatientID (0010,0020) — the MRN the FHIR
ingest wrote.  A patient the CDM does not know is quarantined (``UNKNOWN_PATIENT``) and never
invented; the file stays where it is so re-indexing after the FHIR load picks it up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from cdm.conformance import imaging_procedure
from cdm.errors import EXIT_OK, EXIT_PARTIAL
from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import Vocabulary
from node.dicom.body_parts import BODY_PART_SNOMED
from node.dicom.errors import DUPLICATE_SOP, MISSING_ATTRIBUTE, UNKNOWN_PATIENT, DicomInputError
from node.quarantine import quarantine

IMAGE_OCCURRENCE = tables["image_occurrence"]
PROCEDURE = tables["procedure_occurrence"]
PENDING = tables["pending_reference"]
PERSON = tables["person"]
VISIT = tables["visit_occurrence"]
SOURCE_RECORD = tables["source_record"]

#: Coding scheme designators (PS3.16 Section 8) -> OMOP vocabulary_id.
_SCHEMES = {"SCT": "SNOMED", "SRT": "SNOMED", "DCM": "DICOM", "LN": "LOINC"}


@dataclass(frozen=True)
class SeriesHeader:
    """What ``image_occurrence`` needs from one instance's header."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    modality: str
    date: dt.date
    datetime: dt.datetime | None
    body_part: str | None
    anatomic_code: tuple[str, str, str] | None  # (vocabulary, code, meaning) of AnatomicRegionSequence
    description: str | None
    manufacturer: str | None
    referenced_series_uid: str | None


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    if len(text) >= 8 and text[:8].isdigit():
        try:
            return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
    return None


def _time(value) -> dt.time | None:
    text = str(value or "").strip().split(".")[0].replace(":", "")
    if len(text) >= 2 and text.isdigit():
        text = text.ljust(6, "0")
        try:
            return dt.time(int(text[:2]), int(text[2:4]), int(text[4:6]))
        except ValueError:
            return None
    return None


def referenced_series_uid(ds: Dataset) -> str | None:
    """The image series a derived object was made from.

    SEG and parametric maps name it in ReferencedSeriesSequence (PS3.3 C.7.4.1.1.1 Common Instance
    Reference module); RTSTRUCT under ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
    RTReferencedSeriesSequence (PS3.3 C.8.8.5); SR in CurrentRequestedProcedureEvidenceSequence
    (PS3.3 C.17.2.2).
    """
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        if item.get("SeriesInstanceUID"):
            return str(item.SeriesInstanceUID)
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                if series.get("SeriesInstanceUID"):
                    return str(series.SeriesInstanceUID)
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            if series.get("SeriesInstanceUID"):
                return str(series.SeriesInstanceUID)
    return None


def patient_id_of(ds: Dataset, issuer: str | None = None) -> str | None:
    """The PatientID to match, issued by ``issuer`` when the site configured one.

    PatientID (0010,0020) counts when its IssuerOfPatientID (0010,0021) is ``issuer`` or absent (most
    modalities leave it empty); otherwise the OtherPatientIDsSequence (0010,1002) item from that
    issuer is used.  ``None`` when the instance carries no identifier from ``issuer``.
    """
    main_id = str(ds.get("PatientID", "") or "").strip()
    if issuer is None:
        return main_id or None
    if main_id and str(ds.get("IssuerOfPatientID", "") or "").strip() in ("", issuer):
        return main_id
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        if str(item.get("IssuerOfPatientID", "") or "").strip() == issuer and item.get("PatientID"):
            return str(item.PatientID).strip()
    return None


def header_of(ds: Dataset, issuer: str | None = None) -> SeriesHeader:
    """The :class:`SeriesHeader` of a dataset; :class:`DicomInputError` when a Type 1 attribute is absent.

    ``issuer`` is the site's MRN issuer (``[dicom] patient_id_issuer``), see :func:`patient_id_of`.
    """
    missing = [k for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise DicomInputError(MISSING_ATTRIBUTE, f"missing required attribute(s) {', '.join(missing)}")
    patient_id = patient_id_of(ds, issuer)
    if patient_id is None:
        raise DicomInputError(UNKNOWN_PATIENT, f"no PatientID issued by {issuer!r} (IssuerOfPatientID "
                                               f"{str(ds.get('IssuerOfPatientID', ''))!r}, none in OtherPatientIDsSequence)")
    date = None
    moment = None
    for date_key, time_key in (("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"),
                               ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                               ("StructureSetDate", "StructureSetTime"),  # RTSTRUCT, PS3.3 C.8.8.5
                               ("InstanceCreationDate", "InstanceCreationTime")):
        date = _date(ds.get(date_key))
        if date is not None:
            clock = _time(ds.get(time_key))
            moment = dt.datetime.combine(date, clock) if clock else None
            break
    if date is None:
        raise DicomInputError(MISSING_ATTRIBUTE, "no SeriesDate, StudyDate, AcquisitionDate, ContentDate, "
                                                 "StructureSetDate or InstanceCreationDate")
    anatomic = None
    for item in ds.get("AnatomicRegionSequence", []) or []:
        scheme = _SCHEMES.get(str(item.get("CodingSchemeDesignator", "")))
        if scheme and item.get("CodeValue"):
            anatomic = (scheme, str(item.CodeValue), str(item.get("CodeMeaning", "")))
            break
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper() or None
    return SeriesHeader(
        patient_id=patient_id,
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID) if ds.get("SOPClassUID") else None,
        modality=str(ds.Modality).strip().upper(),
        date=date,
        datetime=moment,
        body_part=body_part,
        anatomic_code=anatomic,
        description=str(ds.get("SeriesDescription", "") or "")[:255] or None,
        manufacturer=str(ds.get("Manufacturer", "") or "")[:255] or None,
        referenced_series_uid=referenced_series_uid(ds),
    )


@dataclass
class _Pending:
    header: SeriesHeader
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)  # SOPInstanceUID -> (path, digest)


@dataclass
class IndexReport:
    """What one indexing run did: every file it saw is indexed, a duplicate copy, a DICOMDIR, or
    quarantined (by reason), so ``files`` is always the sum of the four."""

    files: int = 0
    indexed: int = 0
    duplicates: int = 0
    dicomdirs: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    series: set[str] = field(default_factory=set)

    def count(self, reason_code: str) -> None:
        self.quarantined[reason_code] = self.quarantined.get(reason_code, 0) + 1

    @property
    def exit_code(self) -> int:
        """``EXIT_PARTIAL`` when anything was quarantined, else ``EXIT_OK`` (cdm.errors)."""
        return EXIT_PARTIAL if self.quarantined else EXIT_OK

    def summary(self) -> str:
        bad = sum(self.quarantined.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items()))
        extra = "".join(f", {n} {label}" for n, label in ((self.duplicates, "duplicate copies"),
                                                           (self.dicomdirs, "DICOMDIR")) if n)
        return (f"{self.files} files: {self.indexed} indexed into {len(self.series)} series{extra}, "
                f"{bad} quarantined" + (f" ({detail})" if detail else ""))


class SeriesIndexer:
    """Collects instance headers and writes them as ``image_occurrence`` rows on :meth:`flush`.

    ``source`` says how the instances arrived (``file``, ``scp``, ``pull``); ``issuer`` is the
    site's MRN issuer, when PatientIDs from several issuers arrive.  Not thread-safe: a
    caller serving several associations serialises calls (see :mod:`node.dicom.scp`).
    Memory stays flat however many files a run sees: only the current batch is held, and whether
    an instance was already indexed (earlier in this run or before) is asked of ``source_record``.
    """

    def __init__(self, engine: Engine, source: str = "file", report: IndexReport | None = None,
                 issuer: str | None = None):
        self.engine = engine
        self.source = source
        self.issuer = issuer
        self.report = report or IndexReport()
        self.vocabulary = Vocabulary(engine)
        self.started = _utcnow()
        self._pending: dict[str, _Pending] = {}
        self._batch: dict[str, tuple[str, str]] = {}  # SOPInstanceUID -> (path, digest) of this batch
        self._persons: dict[str, int | None] = {}

    # -- input -------------------------------------------------------------------------------------

    def add(self, ds: Dataset, path: str | Path, digest: str) -> SeriesHeader | None:
        """Queue one instance (its header and content digest are enough); bad headers are quarantined
        at once, and a second copy of an instance already in this batch is resolved at once."""
        try:
            header = header_of(ds, self.issuer)
        except DicomInputError as exc:
            self.reject(exc.reason_code, str(exc), path, sop_class=ds.get("SOPClassUID"),
                        resource_id=ds.get("SOPInstanceUID"))
            return None
        path = str(path)
        earlier = self._batch.get(header.sop_instance_uid)
        if earlier is not None:
            with self.engine.begin() as conn:
                self._duplicate(conn, header, earlier[0], earlier[1], path, digest)
            return None
        self._batch[header.sop_instance_uid] = (path, digest)
        pending = self._pending.setdefault(header.series_uid, _Pending(header))
        pending.instances[header.sop_instance_uid] = (path, digest)
        return header

    def _duplicate(self, conn: Connection, header: SeriesHeader, kept: str | None, kept_digest: str | None,
                   path: str, digest: str) -> bool:
        """A second copy of an instance: a duplicate when it holds the same instance, else quarantined
        ``DUPLICATE_SOP`` naming both files.  True when it was a duplicate."""
        from node.dicom.instance import compare_instances

        if kept_digest == digest:
            difference = None
        elif kept is None:
            difference = "the copy indexed earlier is no longer in its series folder, so the two cannot be compared"
        else:
            try:
                difference = compare_instances(kept, path)
            except Exception as exc:  # noqa: BLE001 - either file may have changed since it was read
                difference = f"the copies cannot be compared ({type(exc).__name__}: {exc})"
        if difference is None:
            self.report.duplicates += 1
            return True
        quarantine(conn, "dicom", DUPLICATE_SOP,
                   f"{path}: SOPInstanceUID {header.sop_instance_uid} is also {kept or 'indexed earlier'} "
                   f"(kept), with different content: {difference}",
                   source_file=path, resource_type=header.sop_class_uid, resource_id=header.sop_instance_uid)
        self.report.count(DUPLICATE_SOP)
        return False

    def reject(self, reason_code: str, reason: str, path, *, sop_class=None, resource_id=None,
               payload: bytes | None = None) -> None:
        """Quarantine one file (its bytes are kept unless the file stays on disk where it is)."""
        with self.engine.begin() as conn:
            quarantine(conn, "dicom", reason_code, f"{path}: {reason}", source_file=str(path),
                       resource_type=str(sop_class) if sop_class else None,
                       resource_id=str(resource_id) if resource_id else None, payload=payload)
        self.report.count(reason_code)

    # -- output ------------------------------------------------------------------------------------

    def flush(self) -> list[SeriesHeader]:
        """Write every queued series in one transaction; returns the headers of the series written."""
        if not self._pending:
            return []
        pending, self._pending, self._batch = self._pending, {}, {}
        with self.engine.begin() as conn:
            return [item.header for item in pending.values() if self._write_series(conn, item)]

    def _person(self, conn: Connection, patient_id: str) -> int | None:
        if patient_id not in self._persons:
            found = conn.execute(
                select(PERSON.c.person_id).where(PERSON.c.person_source_value == patient_id).limit(1)
            ).scalar_one_or_none()
            if found is None:
                return None  # not cached: the FHIR load may add the patient while we run
            self._persons[patient_id] = found
        return self._persons[patient_id]

    def _visit(self, conn: Connection, person_id: int, date: dt.date) -> int | None:
        """The person's visit spanning the acquisition date (the shortest one, when visits nest)."""
        return conn.execute(
            select(VISIT.c.visit_occurrence_id)
            .where(VISIT.c.person_id == person_id, VISIT.c.visit_start_date <= date, VISIT.c.visit_end_date >= date)
            .order_by(VISIT.c.visit_start_date.desc(), VISIT.c.visit_end_date, VISIT.c.visit_occurrence_id)
            .limit(1)
        ).scalar_one_or_none()

    def _anatomic_site(self, conn: Connection, header: SeriesHeader) -> int | None:
        if header.anatomic_code:
            vocabulary, code, meaning = header.anatomic_code
            return self.vocabulary.concept_for(vocabulary, code, meaning or None, "Spec Anatomic Site", conn).concept_id
        if header.body_part in BODY_PART_SNOMED:
            code, name = BODY_PART_SNOMED[header.body_part]
            return self.vocabulary.concept_for("SNOMED", code, name, "Spec Anatomic Site", conn).concept_id
        if header.body_part:
            return self.vocabulary.concept_for("DICOM", f"BodyPart:{header.body_part}"[:50],
                                               f"Body part {header.body_part}", "Spec Anatomic Site", conn).concept_id
        return None

    def _write_series(self, conn: Connection, item: _Pending) -> bool:
        header = item.header
        person_id = self._person(conn, header.patient_id)
        if person_id is None:
            for sop_uid, (path, _digest) in item.instances.items():
                quarantine(conn, "dicom", UNKNOWN_PATIENT,
                           f"{path}: PatientID {header.patient_id!r} matches no person in the CDM "
                           "(load the patient's FHIR record, then re-index)",
                           source_file=path, resource_type=header.sop_class_uid, resource_id=sop_uid)
                self.report.count(UNKNOWN_PATIENT)
            return False
        series_id = stable_id("dicom-series", header.series_uid)
        indexed = self._record_instances(conn, header, series_id, item.instances)
        if not indexed:
            return False  # only further copies of instances indexed before: the series is unchanged
        folder = _folder_of([path for path, _digest in indexed])
        count = conn.execute(select(func.count()).select_from(SOURCE_RECORD).where(
            SOURCE_RECORD.c.cdm_table == "image_occurrence", SOURCE_RECORD.c.cdm_id == series_id,
            SOURCE_RECORD.c.source_key.startswith("dicom|"))  # an ImagingStudy's record is no instance
        ).scalar_one()
        modality = self.vocabulary.concept_for("DICOM", header.modality, f"DICOM modality {header.modality}",
                                               "Procedure", conn).concept_id
        visit_id = self._visit(conn, person_id, header.date)
        existing = conn.execute(select(IMAGE_OCCURRENCE).where(
            IMAGE_OCCURRENCE.c.image_occurrence_id == series_id)).mappings().first()
        values = {
            "person_id": person_id,
            "procedure_occurrence_id": self._study_procedure(conn, header, series_id, existing, person_id, visit_id,
                                                             modality),
            "visit_occurrence_id": visit_id,
            "anatomic_site_concept_id": self._anatomic_site(conn, header),
            "anatomic_site_source_value": header.body_part,
            "local_path": folder,
            "image_occurrence_date": header.date,
            "image_occurrence_datetime": header.datetime,
            "image_study_uid": header.study_uid,
            "image_series_uid": header.series_uid,
            "modality_concept_id": modality,
            "modality_source_value": header.modality,
            "sop_class_uid": header.sop_class_uid,
            "series_description": header.description,
            "manufacturer": header.manufacturer,
            "referenced_series_uid": header.referenced_series_uid,
            "image_source": self.source,
        }
        if existing is None:
            conn.execute(insert(IMAGE_OCCURRENCE).values(image_occurrence_id=series_id, instance_count=count, **values))
        else:
            # Fill what an earlier writer (ImagingStudy, an earlier batch) left empty; keep what it set,
            # except where the files are and how many there are, which only DICOM knows.
            changes = {k: v for k, v in values.items()
                       if v is not None and (existing[k] is None or existing[k] == 0)}
            if existing["local_path"] and existing["local_path"] != folder:
                changes["local_path"] = _common_folder(existing["local_path"], folder)
            changes["instance_count"] = count
            conn.execute(update(IMAGE_OCCURRENCE)
                         .where(IMAGE_OCCURRENCE.c.image_occurrence_id == series_id).values(**changes))
        self.report.indexed += len(indexed)
        self.report.series.add(header.series_uid)
        return True

    def _study_procedure(self, conn: Connection, header: SeriesHeader, series_id: int, existing, person_id: int,
                         visit_id, modality: int) -> int | None:
        """The PROCEDURE_OCCURRENCE of the series' study (MI-CDM makes the link NOT NULL), written by the
        first series of the study to arrive, whichever way in (:func:`cdm.conformance.imaging_procedure`).
        ``None`` (nothing written) when the series already names a procedure, or when its ImagingStudy
        named one that has not arrived yet (a pending reference fills it then)."""
        if existing is not None and existing["procedure_occurrence_id"] is not None:
            return None
        if existing is not None and conn.execute(select(PENDING.c.target_key).where(
                PENDING.c.cdm_table == "image_occurrence", PENDING.c.cdm_id == series_id,
                PENDING.c.column_name == "procedure_occurrence_id").limit(1)).first() is not None:
            return None
        row = imaging_procedure(header.study_uid, person_id, header.date, header.datetime, visit_id, modality,
                                header.modality)
        present = conn.execute(select(PROCEDURE.c.procedure_occurrence_id).where(
            PROCEDURE.c.procedure_occurrence_id == row["procedure_occurrence_id"])).first()
        if present is None:
            conn.execute(insert(PROCEDURE).values(**row))
        return row["procedure_occurrence_id"]

    def _record_instances(self, conn: Connection, header: SeriesHeader, series_id: int,
                          instances: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
        """Write the ``source_record`` rows of a series' instances; returns the (path, digest) of those
        indexed (new, or indexed again from the same content), after resolving further copies."""
        keys = {f"dicom|{uid}": (uid, path, digest) for uid, (path, digest) in instances.items()}
        records = {row.source_key: row for row in conn.execute(
            select(SOURCE_RECORD.c.source_key, SOURCE_RECORD.c.cdm_id, SOURCE_RECORD.c.content_hash,
                   SOURCE_RECORD.c.loaded_at)
            .where(SOURCE_RECORD.c.cdm_table == "image_occurrence", SOURCE_RECORD.c.source_key.in_(list(keys))))}
        now = _utcnow()
        new, again, indexed = [], [], []
        for key, (uid, path, digest) in keys.items():
            record = records.get(key)
            if record is None:
                new.append({"source_key": key, "cdm_table": "image_occurrence", "cdm_id": series_id,
                            "content_hash": digest, "loaded_at": now})
                indexed.append((path, digest))
                continue
            # Rows written before digests were kept hold the hash of the file's path instead.
            same = record.content_hash in (digest, hashlib.sha256(path.encode()).hexdigest())
            if same and record.loaded_at < self.started and record.cdm_id == series_id:
                again.append({"key": key, "series": series_id, "digest": digest, "now": now})
                indexed.append((path, digest))  # the same file indexed again (an idempotent re-run)
                continue
            kept = None if same else self._kept_copy(conn, record.cdm_id, uid, path)
            self._duplicate(conn, replace(header, sop_instance_uid=uid), kept,
                            digest if same else record.content_hash, path, digest)
        if new:
            conn.execute(insert(SOURCE_RECORD), new)
        if again:
            conn.execute(update(SOURCE_RECORD).where(
                SOURCE_RECORD.c.source_key == bindparam("key"), SOURCE_RECORD.c.cdm_table == "image_occurrence",
                SOURCE_RECORD.c.cdm_id == bindparam("series")).values(
                content_hash=bindparam("digest"), loaded_at=bindparam("now")), again)
        return indexed

    def _kept_copy(self, conn: Connection, series_id: int, sop_uid: str, other: str) -> str | None:
        """The file of ``sop_uid`` indexed earlier: looked for in its series' folder (only on a conflict)."""
        import pydicom

        folder = conn.execute(select(IMAGE_OCCURRENCE.c.local_path).where(
            IMAGE_OCCURRENCE.c.image_occurrence_id == series_id)).scalar_one_or_none()
        if not folder or not Path(folder).exists():
            return None
        for root, _dirs, names in os.walk(folder):
            for name in sorted(names):
                candidate = os.path.join(root, name)
                if candidate == other:
                    continue
                try:
                    ds = pydicom.dcmread(candidate, stop_before_pixels=True, force=True,
                                         specific_tags=["SOPInstanceUID"])
                except Exception:  # noqa: BLE001 - foreign files in the folder
                    continue
                if str(ds.get("SOPInstanceUID", "")) == sop_uid:
                    return candidate
        return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _folder_of(paths: list[str]) -> str:
    folders = sorted({str(Path(p).parent) for p in paths})
    folder = folders[0]
    for other in folders[1:]:
        folder = _common_folder(folder, other)
    return folder


def _common_folder(a: str, b: str) -> str:
    try:
        return os.path.commonpath([a, b])
    except ValueError:  # different drives: keep the first
        return a
