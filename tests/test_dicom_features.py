"""Radiomic and parametric-map features from a SEG on a synthetic CT, and the bad-input paths."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node.dicom.features import extract_features
from node.dicom.index import index_paths
from node.quarantine import quarantine_counts
from test_dicom_fixtures import LESION, PIXEL_MM, SLICE_MM, add_person, make_study, write_rtstruct, write_seg

IF = tables["image_feature"]


def _features(engine):
    with engine.connect() as conn:
        return list(conn.execute(select(IF)).mappings())


def test_seg_gives_radiomics_and_map_statistics(any_cdm, tmp_path):
    study = make_study(tmp_path / "in")
    add_person(any_cdm, study["patient_id"])
    index_paths(any_cdm, [tmp_path / "in"])
    report = extract_features(any_cdm)
    assert report.segmentations == 1 and not report.quarantined
    rows = _features(any_cdm)
    by = {(r["image_occurrence_id"], r["image_feature_source_value"]): r for r in rows}
    ct_id = stable_id("dicom-series", study["ct"])
    volume = by[(ct_id, "original_shape_VoxelVolume")]
    expected_volume = study["lesion"].sum() * PIXEL_MM * PIXEL_MM * SLICE_MM
    assert volume["value_as_number"] == pytest.approx(expected_volume)
    assert volume["alg_system"] == f"https://pypi.org/project/pyradiomics-bhklab/{volume['alg_version']}/"
    # MI-CDM: every value is also a measurement row, linked from the feature (issue 20)
    measurement = tables["measurement"]
    with any_cdm.connect() as conn:
        values = dict(conn.execute(select(measurement.c.measurement_id, measurement.c.value_as_number)).all())
    assert {r["image_feature_event_field_concept_id"] for r in rows} == {1147330}
    assert all(values[r["image_feature_event_id"]] == r["value_as_number"] for r in rows)
    assert volume["roi_label"] == "lesion"
    assert by[(ct_id, "lesion_volume")]["image_feature_concept_id"] == 2000000111
    adc = by[(stable_id("dicom-series", study["adc"]), "adc_mean")]
    assert adc["image_feature_concept_id"] == 2000000100
    assert adc["value_as_number"] == pytest.approx(study["adc_values"].mean(), rel=1e-6)
    assert by[(stable_id("dicom-series", study["adc"]), "adc_min")]["value_as_number"] == pytest.approx(
        study["adc_values"].min(), rel=1e-6)
    suv = by[(stable_id("dicom-series", study["pet"]), "suv_max")]
    assert suv["image_feature_concept_id"] == 2000000102 and suv["unit_source_value"] == "g/mL"
    assert suv["value_as_number"] == pytest.approx(study["suv_values"].max(), rel=1e-6)
    assert adc["image_finding_id"] == volume["image_finding_id"]  # one lesion across series
    mean_hu = by[(ct_id, "original_firstorder_Mean")]["value_as_number"]
    assert mean_hu > 1090  # the lesion is 60 above a 1040 background
    # Re-running replaces, never duplicates.
    extract_features(any_cdm, study["ct"])
    assert len(_features(any_cdm)) == len(rows)


def test_seg_referencing_absent_images_is_quarantined(sqlite_cdm, tmp_path):
    study = make_study(tmp_path / "in")
    add_person(sqlite_cdm, study["patient_id"])
    study["ct_files"][3].unlink()  # one source slice gone before indexing
    index_paths(sqlite_cdm, [tmp_path / "in"])
    report = extract_features(sqlite_cdm)
    assert report.quarantined == {"SEG_REFERENCES_MISSING": 1}
    with sqlite_cdm.connect() as conn:
        assert quarantine_counts(conn, "dicom") == {"SEG_REFERENCES_MISSING": 1}
    assert _features(sqlite_cdm) == []


def test_missing_pixel_module_is_quarantined_and_other_segs_still_run(sqlite_cdm, tmp_path):
    good = make_study(tmp_path / "good", patient_id="MRN001", seed=1)
    bad = make_study(tmp_path / "bad", patient_id="MRN002", seed=2)
    for pid in ("MRN001", "MRN002"):
        add_person(sqlite_cdm, pid)
    for path in bad["ct_files"]:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    index_paths(sqlite_cdm, [tmp_path])
    report = extract_features(sqlite_cdm)
    assert report.segmentations == 2
    assert report.quarantined == {"MISSING_PIXEL_DATA": 1}
    series = {r["image_occurrence_id"] for r in _features(sqlite_cdm)}
    assert stable_id("dicom-series", good["ct"]) in series
    assert stable_id("dicom-series", bad["ct"]) not in series


def test_single_voxel_roi_is_quarantined_with_reason(sqlite_cdm, tmp_path):
    study = make_study(tmp_path / "in")
    add_person(sqlite_cdm, study["patient_id"])
    study["seg_path"].unlink()
    one_voxel = np.zeros_like(study["lesion"])
    one_voxel[LESION[0].start, 0, 0] = True
    write_seg(tmp_path / "in" / "seg", [pydicom.dcmread(p) for p in study["ct_files"]], one_voxel)
    index_paths(sqlite_cdm, [tmp_path / "in"])
    report = extract_features(sqlite_cdm)
    assert report.segmentations == 1 and report.features == 0
    assert report.quarantined == {"FEATURE_FAILED": 1}
    with sqlite_cdm.connect() as conn:
        reason = conn.execute(select(tables["quarantine"].c.reason)).scalar_one()
    assert "single voxel" in reason


def test_rtstruct_roi_matches_the_seg(sqlite_cdm, tmp_path):
    study = make_study(tmp_path / "in")
    add_person(sqlite_cdm, study["patient_id"])
    write_rtstruct(tmp_path / "in" / "rt", [pydicom.dcmread(p) for p in study["ct_files"]], study["lesion"])
    index_paths(sqlite_cdm, [tmp_path / "in"])
    report = extract_features(sqlite_cdm)
    assert report.segmentations == 2 and not report.quarantined
    rows = _features(sqlite_cdm)
    volume = {r["roi_label"]: r["value_as_number"] for r in rows
              if r["image_feature_source_value"] == "original_shape_VoxelVolume"}
    assert volume["GTV"] == pytest.approx(volume["lesion"])  # RTSTRUCT outline == SEG voxels
    adc = {r["roi_label"]: r["value_as_number"] for r in rows if r["image_feature_source_value"] == "adc_min"}
    assert adc["GTV"] == pytest.approx(study["adc_values"].min())


def test_enhanced_multiframe_ct_gives_the_same_features(sqlite_cdm, tmp_path):
    import highdicom as hd
    from pydicom.uid import generate_uid

    study = make_study(tmp_path / "in")
    add_person(sqlite_cdm, study["patient_id"])
    legacy = [pydicom.dcmread(p) for p in study["ct_files"]]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 5, generate_uid(), 1)
    (tmp_path / "in" / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "in" / "enhanced" / "ct.dcm")
    write_seg(tmp_path / "in" / "seg-enhanced", [pydicom.dcmread(tmp_path / "in" / "enhanced" / "ct.dcm")],
              study["lesion"])
    index_paths(sqlite_cdm, [tmp_path / "in"])
    report = extract_features(sqlite_cdm)
    assert report.segmentations == 2 and not report.quarantined, report.quarantined
    by_series = {}
    for r in _features(sqlite_cdm):
        if r["image_feature_source_value"] in ("original_shape_VoxelVolume", "original_firstorder_Mean"):
            by_series.setdefault(r["image_feature_source_value"], set()).add(round(r["value_as_number"], 6))
    # Same voxels, same values: the multi-frame and the single-frame series agree.
    assert len(by_series["original_shape_VoxelVolume"]) == 1
    assert len(by_series["original_firstorder_Mean"]) == 1
