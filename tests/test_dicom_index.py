"""Directory indexing: series -> image_occurrence, DICOMDIR, quarantine of bad files, idempotence."""

from __future__ import annotations

import datetime as dt
import shutil

import pydicom
from pydicom.data import get_testdata_file
from sqlalchemy import func, insert, select

from cdm.ids import stable_id
from cdm.schema import tables
from node.dicom.index import index_paths
from node.quarantine import quarantine_counts
from test_dicom_fixtures import add_person, make_study

IO = tables["image_occurrence"]
Q = tables["quarantine"]


def _rows(engine):
    with engine.connect() as conn:
        return {r["image_series_uid"]: r for r in conn.execute(select(IO)).mappings()}


def test_index_maps_series_and_is_idempotent(any_cdm, tmp_path):
    study = make_study(tmp_path / "in")
    person = add_person(any_cdm, "MRN001")
    with any_cdm.begin() as conn:  # an outpatient visit on the scan day, and an older one
        for visit_id, day in ((7, dt.date(2026, 3, 1)), (8, dt.date(2025, 1, 5))):
            conn.execute(insert(tables["visit_occurrence"]).values(
                visit_occurrence_id=visit_id, person_id=person, visit_concept_id=9202, visit_start_date=day,
                visit_end_date=day, visit_type_concept_id=32817))
    first = index_paths(any_cdm, [tmp_path / "in"])
    assert first.files == 8 * 3 + 1 and first.indexed == 25 and not first.quarantined
    rows = _rows(any_cdm)
    assert set(rows) == {study["ct"], study["adc"], study["pet"], rows_seg(rows)}
    ct = rows[study["ct"]]
    assert ct["image_occurrence_id"] == stable_id("dicom-series", study["ct"])
    assert ct["person_id"] == person and ct["instance_count"] == 8 and ct["visit_occurrence_id"] == 7
    assert ct["modality_source_value"] == "CT" and ct["modality_concept_id"] > 0
    assert ct["anatomic_site_source_value"] == "THIGH"
    assert str(ct["image_occurrence_date"]) == "2026-03-01"
    assert ct["local_path"] == str(tmp_path / "in" / "ct")
    seg = rows[rows_seg(rows)]
    assert seg["referenced_series_uid"] == study["ct"] and seg["modality_source_value"] == "SEG"
    with any_cdm.connect() as conn:
        site = conn.execute(select(tables["concept"].c.concept_code).where(
            tables["concept"].c.concept_id == ct["anatomic_site_concept_id"])).scalar_one()
    assert site == "68367000"  # SNOMED thigh structure
    again = index_paths(any_cdm, [tmp_path / "in"])
    assert again.indexed == 25
    assert _rows(any_cdm)[study["ct"]]["instance_count"] == 8


def rows_seg(rows):
    return next(uid for uid, r in rows.items() if r["modality_source_value"] == "SEG")


def test_bad_files_are_quarantined_and_the_rest_loads(sqlite_cdm, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "notes.txt").write_text("not a dicom file at all")
    good = (folder / "ct.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(good[:300])
    (folder / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 2)
    add_person(sqlite_cdm, pydicom.dcmread(folder / "ct.dcm").PatientID)
    report = index_paths(sqlite_cdm, [folder])
    assert report.indexed == 1 and report.files == 4
    with sqlite_cdm.connect() as conn:
        counts = quarantine_counts(conn, "dicom")
        payload = conn.execute(select(Q.c.payload).where(Q.c.reason_code == "NOT_DICOM")).scalar_one()
    assert counts == {"NOT_DICOM": 1, "CORRUPT_DICOM": 1, "TRUNCATED": 1}
    assert payload == b"not a dicom file at all"
    assert "1 indexed" in report.summary() and "NOT_DICOM 1" in report.summary()


def test_unknown_patient_is_quarantined_then_reindexed(any_cdm, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    report = index_paths(any_cdm, [folder])
    assert report.quarantined == {"UNKNOWN_PATIENT": 1} and report.indexed == 0
    with any_cdm.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IO)).scalar_one() == 0
        reason = conn.execute(select(Q.c.reason).where(Q.c.reason_code == "UNKNOWN_PATIENT")).scalar_one()
    assert "4MR1" in reason
    assert (folder / "mr.dcm").exists()  # kept for a re-index after the FHIR load
    add_person(any_cdm, "4MR1")
    assert index_paths(any_cdm, [folder]).indexed == 1
    assert len(_rows(any_cdm)) == 1


def test_fhir_row_is_filled_not_overwritten(sqlite_cdm, tmp_path):
    study = make_study(tmp_path)
    person = add_person(sqlite_cdm, "MRN001")
    series_id = stable_id("dicom-series", study["ct"])
    with sqlite_cdm.begin() as conn:  # what an ImagingStudy ingest writes first
        conn.execute(insert(IO).values(
            image_occurrence_id=series_id, person_id=person, image_occurrence_date=dt.date(2026, 3, 1),
            image_study_uid=study["study"], image_series_uid=study["ct"], modality_concept_id=0,
            series_description="from FHIR", image_source="fhir", procedure_occurrence_id=42))
    index_paths(sqlite_cdm, [tmp_path / "ct"])
    row = _rows(sqlite_cdm)[study["ct"]]
    assert row["series_description"] == "from FHIR" and row["procedure_occurrence_id"] == 42
    assert row["image_source"] == "fhir"
    assert row["modality_concept_id"] > 0 and row["instance_count"] == 8 and row["local_path"]


def test_dicomdir_lists_its_instances(sqlite_cdm):
    dicomdir = get_testdata_file("DICOMDIR")
    fs = pydicom.fileset.FileSet(pydicom.dcmread(dicomdir))
    patients = {str(i.PatientID) for i in fs}
    for pid in patients:
        add_person(sqlite_cdm, pid)
    report = index_paths(sqlite_cdm, [dicomdir])
    assert report.files == len(list(fs)) + 1 and report.dicomdirs == 1  # the DICOMDIR itself is counted
    assert report.indexed == len(list(fs)) - sum(report.quarantined.values())
    assert report.indexed > 0
    with sqlite_cdm.connect() as conn:
        persons = conn.execute(select(func.count(func.distinct(IO.c.person_id)))).scalar_one()
    assert persons == len(patients)


def test_configured_issuer_picks_the_site_mrn(sqlite_cdm, tmp_path):
    from pydicom.dataset import Dataset

    folder = tmp_path / "in"
    folder.mkdir()
    referred = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    referred.PatientID, referred.IssuerOfPatientID = "EXT-9", "REFERRER"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "MRN777", "HOSP"
    referred.OtherPatientIDsSequence = [other]
    referred.save_as(folder / "referred.dcm")
    foreign = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    foreign.PatientID, foreign.IssuerOfPatientID = "EXT-10", "REFERRER"
    foreign.save_as(folder / "foreign.dcm")
    person = add_person(sqlite_cdm, "MRN777")
    add_person(sqlite_cdm, "EXT-10")  # same value from another issuer must not match
    report = index_paths(sqlite_cdm, [folder], issuer="HOSP")
    assert report.indexed == 1 and report.quarantined == {"UNKNOWN_PATIENT": 1}
    rows = _rows(sqlite_cdm)
    assert [r["person_id"] for r in rows.values()] == [person]
    with sqlite_cdm.connect() as conn:
        reason = conn.execute(select(Q.c.reason).where(Q.c.reason_code == "UNKNOWN_PATIENT")).scalar_one()
    assert "no PatientID issued by 'HOSP'" in reason


def test_duplicates_truncated_copies_and_bare_datasets_are_all_accounted_for(sqlite_cdm, tmp_path):
    """pydicom's MR_small in eight encodings is one instance; MR_truncated (the same UID, cut short) is
    refused even when it is read first; an edited copy is DUPLICATE_SOP with both paths; an RTSTRUCT
    without File Meta is indexed; a DICOMDIR under another name is counted as one."""
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "a_first_truncated.dcm")  # walked first
    encodings = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm")
    for name in encodings:
        shutil.copy(get_testdata_file(name), folder / f"b_{name}")
    edited = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    edited.PatientName = "Someone^Else"
    edited.save_as(folder / "c_edited.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "d_rtstruct_no_meta.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "e_index.dir")
    add_person(sqlite_cdm, "4MR1")
    add_person(sqlite_cdm, str(pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True).PatientID))
    report = index_paths(sqlite_cdm, [folder])
    assert report.files == 12
    assert (report.indexed, report.duplicates, report.dicomdirs) == (2, 7, 1), report.summary()
    assert report.quarantined == {"TRUNCATED": 1, "DUPLICATE_SOP": 1}
    assert report.files == report.indexed + report.duplicates + report.dicomdirs + sum(report.quarantined.values())
    assert "7 duplicate copies, 1 DICOMDIR, 2 quarantined (DUPLICATE_SOP 1, TRUNCATED 1)" in report.summary()
    with sqlite_cdm.connect() as conn:
        reasons = dict(conn.execute(select(Q.c.reason_code, Q.c.reason)).all())
        hashes = conn.execute(select(tables["source_record"].c.content_hash)).scalars().all()
    assert "Pixel Data declares 8192 bytes but the file holds 8130" in reasons["TRUNCATED"]
    assert str(folder / "c_edited.dcm") in reasons["DUPLICATE_SOP"] and "PatientName" in reasons["DUPLICATE_SOP"]
    assert str(folder / "b_MR_small.dcm") in reasons["DUPLICATE_SOP"]  # the copy kept is named too
    assert len(hashes) == 2
    # A re-run finds the same: the instance indexed again, the other copies still duplicates, and the
    # edited copy still conflicting with the kept one (found again in its folder).
    again = index_paths(sqlite_cdm, [folder])
    assert (again.indexed, again.duplicates) == (2, 7) and again.quarantined == report.quarantined
    assert _rows(sqlite_cdm)[str(edited.SeriesInstanceUID)]["instance_count"] == 1
