"""Builders for the DICOM tests: a small synthetic CT series with a lesion, its SEG (highdicom), an
ADC map and a PET series on the same Frame of Reference, plus a person row for a PatientID.

Collected by pytest only for the sanity test at the bottom; the other test_dicom_* modules import it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert

from cdm.ids import stable_id
from cdm.schema import tables

SHAPE = (8, 32, 32)  # z, y, x
LESION = (slice(2, 6), slice(10, 20), slice(12, 22))
PIXEL_MM, SLICE_MM = 1.5, 3.0


def add_person(engine, patient_id: str) -> int:
    person_id = stable_id("test-person", patient_id)
    with engine.begin() as conn:
        conn.execute(insert(tables["person"]).values(
            person_id=person_id, gender_concept_id=0, year_of_birth=1970, race_concept_id=0,
            ethnicity_concept_id=0, person_source_value=patient_id))
    return person_id


def _slice(pixels, z, *, modality, sop_class, study_uid, series_uid, frame_uid, patient_id, number,
           image_type=("ORIGINAL", "PRIMARY", "AXIAL"), slope=1.0, units=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Test^Patient", "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate = ds.SeriesDate = "20260301"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, number, z + 1
    ds.BodyPartExamined = "THIGH"
    ds.Manufacturer = "radfed-test"
    ds.SeriesDescription = f"{modality} test series"
    ds.ImageType = list(image_type)
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z * SLICE_MM]
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.SliceThickness = SLICE_MM
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    if modality == "CT":
        ds.RescaleType = "HU"
    if units:
        ds.Units = units
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_series(folder: Path, volume: np.ndarray, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in range(volume.shape[0]):
        ds = _slice(volume[z], z, **kw)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_study(folder: Path, patient_id: str = "MRN001", seed: int = 0) -> dict:
    """CT + SEG of the lesion + ADC map + PET (SUVbw), all on one Frame of Reference."""
    rng = np.random.default_rng(seed)
    study, frame = generate_uid(), generate_uid()
    common = dict(study_uid=study, frame_uid=frame, patient_id=patient_id)
    lesion = np.zeros(SHAPE, bool)
    lesion[LESION] = True
    ct = rng.normal(40, 5, SHAPE) + 1000
    ct[lesion] += 60
    adc = rng.normal(1500, 50, SHAPE)
    adc[lesion] = rng.normal(800, 40, lesion.sum())
    suv = rng.normal(1.0, 0.1, SHAPE).clip(0.1)
    suv[lesion] = rng.normal(6.0, 0.5, lesion.sum()).clip(0.1)
    ct, adc = np.round(ct), np.round(adc)  # what uint16 pixels store
    ct_series, adc_series, pet_series = generate_uid(), generate_uid(), generate_uid()
    ct_files = write_series(folder / "ct", ct, modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            series_uid=ct_series, number=1, **common)
    adc_files = write_series(folder / "adc", adc, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4",
                             series_uid=adc_series, number=2, image_type=("DERIVED", "PRIMARY", "ADC"), **common)
    pet_files = write_series(folder / "pet", np.round(suv * 1000), modality="PT",
                             sop_class="1.2.840.10008.5.1.4.1.1.128", series_uid=pet_series, number=3,
                             slope=0.001, units="GML", **common)
    sources = [pydicom.dcmread(p) for p in ct_files]
    seg_path = write_seg(folder / "seg", sources, lesion)
    return {"study": study, "ct": ct_series, "adc": adc_series, "pet": pet_series, "seg_path": seg_path,
            "ct_files": ct_files, "adc_files": adc_files, "pet_files": pet_files, "lesion": lesion,
            "adc_values": adc[lesion] * 1.0, "suv_values": np.round(suv * 1000)[lesion] * 0.001,
            "patient_id": patient_id}


def write_seg(folder: Path, sources: list, lesion: np.ndarray) -> Path:
    if len(sources) > 1:
        sources = sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=lesion.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=10, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="radfed-test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1", series_description="lesion SEG")
    seg.SeriesDate = seg.StudyDate = "20260301"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "seg.dcm"
    seg.save_as(path)
    return path


def write_rtstruct(folder: Path, sources: list, lesion: np.ndarray, name: str = "GTV") -> Path:
    """An RT Structure Set (PS3.3 A.19) whose ROI outlines ``lesion`` slice by slice along voxel edges."""
    first = sources[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID, ds.PatientName = first.PatientID, first.PatientName
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    ds.StudyDate = ds.StructureSetDate = first.StudyDate
    ds.Modality, ds.StructureSetLabel, ds.SeriesNumber = "RTSTRUCT", "test", 20
    by_z = {int(round(float(d.ImagePositionPatient[2]) / SLICE_MM)): d for d in sources}
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(d) for d in sources]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = 1, first.FrameOfReferenceUID, name
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = [roi]
    contours = []
    for z in range(lesion.shape[0]):
        ys, xs = np.nonzero(lesion[z])
        if not len(ys):
            continue
        x0, x1 = (xs.min() - 0.5) * PIXEL_MM, (xs.max() + 0.5) * PIXEL_MM
        y0, y1 = (ys.min() - 0.5) * PIXEL_MM, (ys.max() + 0.5) * PIXEL_MM
        item = Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = 4
        item.ContourData = [v for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)) for v in (x, y, z * SLICE_MM)]
        item.ContourImageSequence = [_image_ref(by_z[z])]
        contours.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = contours
    ds.ROIContourSequence = [roi_contour]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _image_ref(source) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    return item


# -- compressed encodings, by real encoders: dcmtk's (JPEG lossless, RLE, JPEG-LS, deflate) and
# pydicom's openjpeg plugin (JPEG 2000 lossless) ------------------------------------------------------

_DCMTK = {"jpeg-lossless": ["dcmcjpeg", "+e1", "+un"], "rle": ["dcmcrle"], "jpeg-ls": ["dcmcjpls"], "deflate": ["dcmconv", "+td"]}
SYNTAX = {"jpeg-lossless": "1.2.840.10008.1.2.4.70", "rle": "1.2.840.10008.1.2.5", "jpeg-ls": "1.2.840.10008.1.2.4.80",
          "deflate": "1.2.840.10008.1.2.1.99", "j2k": "1.2.840.10008.1.2.4.90", "none": "1.2.840.10008.1.2.1"}


def recode(path: Path, kind: str) -> Path:
    """Re-encode the file at ``path`` in place (``kind`` a key of :data:`SYNTAX`), pixels lossless."""
    import subprocess

    if kind == "none":
        return path
    if kind == "j2k":
        from pydicom.uid import JPEG2000Lossless

        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    else:
        out = path.with_suffix(".tmp")
        subprocess.run([*_DCMTK[kind], str(path), str(out)], check=True, capture_output=True)
        out.replace(path)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == SYNTAX[kind]
    return path


#: dcmtk storescu's option to propose a file's own transfer syntax (it proposes uncompressed otherwise).
STORESCU_PROPOSE = {"1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
                    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
                    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
                    "1.2.840.10008.1.2.2": "-xb", "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe"}


def storescu_args(path: Path) -> list[str]:
    """``storescu`` options that propose exactly what ``path`` is encoded in (as an archive sends it)."""
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return ["-R", STORESCU_PROPOSE[syntax], str(path)]


#: CT slice z -> its encoding in :func:`make_mixed_study` (PACS hold series in mixed encodings).
CT_CODECS = ("j2k", "j2k", "jpeg-lossless", "jpeg-lossless", "rle", "rle", "none", "none")
#: pydicom's own real compressed files, re-identified into a study: (file, encoding it keeps).
REAL_FILES = (("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"), ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),
              ("SC_rgb_rle_16bit.dcm", "1.2.840.10008.1.2.5"), ("ExplVR_BigEnd.dcm", "1.2.840.10008.1.2.2"),
              ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"), ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"))


def make_mixed_study(folder: Path, patient_id: str = "MRN001", seed: int = 0) -> dict:
    """:func:`make_study` with its CT in JPEG 2000, JPEG lossless, RLE and uncompressed slices, the ADC map
    in RLE, the SEG deflated, plus a series of pydicom's real compressed files (retired Ultrasound
    Image Storage in big endian among them) and a Parametric Map, all in one study."""
    from pydicom.data import get_testdata_file

    study = make_study(folder, patient_id, seed)
    for z, path in enumerate(study["ct_files"]):
        recode(path, CT_CODECS[z])
    for path in study["adc_files"]:
        recode(path, "rle")
    recode(study["seg_path"], "deflate")
    extras = folder / "real"
    extras.mkdir()
    series_uid = generate_uid()
    for n, (name, _syntax) in enumerate(REAL_FILES):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study["study"], series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 30, n + 1
        ds.StudyDate = ds.SeriesDate = "20260301"
        ds.save_as(extras / name)  # the pixel data bitstream is kept as it is
    study["pm_path"] = write_parametric_map(folder / "pm", [pydicom.dcmread(p) for p in study["adc_files"]])
    study["real_series"] = series_uid
    study["count"] = len(study["ct_files"]) * 3 + 1 + len(REAL_FILES) + 1
    return study


def write_parametric_map(folder: Path, sources: list) -> Path:
    """A Parametric Map (PS3.3 A.75, float pixels) of ``sources``: a storage class past pynetdicom's first 120."""
    sources = sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))
    values = np.stack([d.pixel_array for d in sources]).astype(np.float32) / 1000.0
    window = hd.pm.RealWorldValueMapping(
        lut_label="ADC", lut_explanation="ADC in mm2/s", unit=hd.sr.CodedConcept("mm2/s", "UCUM", "mm2/s"),
        value_range=(float(values.min()), float(values.max())), slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        source_images=sources, pixel_array=values, series_instance_uid=generate_uid(), series_number=40,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="radfed-test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        contains_recognizable_visual_features=False, real_world_value_mappings=[window],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=float(values.mean()),
                                                         window_width=float(np.ptp(values)) or 1.0)])
    pm.SeriesDate = pm.StudyDate = "20260301"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pm.dcm"
    pm.save_as(path)
    return path


def test_fixture_study_is_consistent(tmp_path):
    study = make_study(tmp_path)
    seg = pydicom.dcmread(study["seg_path"])
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["ct"]
    assert study["lesion"].sum() == 4 * 10 * 10
    assert dt.date(2026, 3, 1)
