"""Quantitative imaging features -> ``image_feature``: the imaging side of the digital biopsy.

For each indexed segmentation series — DICOM SEG (PS3.3 A.51), whose segments are regions of
interest on the image series it references (ReferencedSeriesSequence, PS3.3 C.7.4.1.1.1), or an RT
Structure Set (PS3.3 A.19), whose closed planar ROI contours are rasterised on the series named
under RTReferencedSeriesSequence — each ROI gets:

* radiomic features of the ROI on that image series, computed by pyradiomics (first-order and
  shape classes; ``alg_system`` the URI of its PyPI release, ``alg_version`` its version).  The shape features
  ``VoxelVolume`` and ``Maximum3DDiameter`` are also filed as RADFED ``lesion_volume`` and
  ``longest_diameter``;
* parametric-map statistics of the same ROI on every map of the study sharing its Frame of
  Reference (PS3.3 C.7.4.1): an ADC map (ImageType value 3 ``ADC``, values in 10^-6 mm2/s) gives
  RADFED ``adc_mean`` / ``adc_min`` in um2/s; a PET series (Units (0054,1001) ``GML``, stored value
  x RescaleSlope = SUVbw) gives ``suv_max`` / ``suv_mean`` in g/ml.  The mask is resampled onto the
  map's grid through patient coordinates (nearest neighbour), so maps need not share the anatomy's
  geometry.

Bad input is quarantined with a stable reason and extraction goes on with the next segmentation:
``MISSING_PIXEL_DATA`` (an image without its Image Pixel module, PS3.3 C.7.6.3),
``SEG_REFERENCES_MISSING`` (a SEG whose source images are not indexed), ``UNDECODABLE_PIXELS``
(pixel data no installed decoder can decode, e.g. MPEG video, or a damaged bitstream; the reason
names the transfer syntax and the decoders' errors), ``FEATURE_FAILED`` (e.g. pyradiomics refusing a one-voxel ROI).
Feature rows have deterministic ids, so re-running replaces them.  Each value is also a
``measurement`` row the feature links to, as the Medical Imaging CDM has it
(:mod:`cdm.conformance`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from sqlalchemy import Engine, delete, insert, or_, select

from cdm.conformance import feature_measurement
from cdm.ids import stable_id
from cdm.schema import tables
from cdm.vocabulary import Vocabulary
from node.dicom.instance import pixel_array, read_full
from node.dicom.errors import FEATURE_FAILED, MISSING_PIXEL_DATA, SEG_REFERENCES_MISSING, DicomInputError
from node.quarantine import quarantine

IMAGE_OCCURRENCE = tables["image_occurrence"]
IMAGE_FEATURE = tables["image_feature"]
MEASUREMENT = tables["measurement"]
RADIOMICS_CLASSES = ("firstorder", "shape")
PARAMETRIC_ALG = "radfed-parametric-map"
#: pyradiomics feature -> RADFED concept code it also answers, with its UCUM unit.
RADIOMICS_AS_RADFED = {
    "original_shape_VoxelVolume": ("lesion_volume", "mm3"),
    "original_shape_Maximum3DDiameter": ("longest_diameter", "mm"),
}

logging.getLogger("radiomics").setLevel(logging.ERROR)


@dataclass
class FeatureReport:
    segmentations: int = 0
    features: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items()))
        return (f"{self.segmentations} segmentations: {self.features} features written"
                + (f", quarantined: {bad}" if bad else ""))


# -- reading series ----------------------------------------------------------------------------------


def series_files(folder: str | None, series_uid: str) -> list[Path]:
    """Files under ``folder`` that belong to ``series_uid`` (the CDM stores a series' folder)."""
    if not folder or not Path(folder).exists():
        return []
    root = Path(folder)
    candidates = [root] if root.is_file() else [Path(r) / n for r, _d, ns in os.walk(root) for n in ns]
    found = []
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
        except Exception:  # noqa: BLE001 - foreign files in the folder were quarantined by the index
            continue
        if str(ds.get("SeriesInstanceUID", "")) == series_uid:
            found.append(path)
    return found


@dataclass
class Volume:
    """An image series as a SimpleITK image (z, y, x) and where each plane came from.

    ``planes`` lists (SOPInstanceUID, frame number) in slice order; the frame number is ``None`` for
    single-frame instances and 1-based for multi-frame (enhanced) ones.
    """

    image: sitk.Image
    planes: list[tuple[str, int | None]]
    frame_of_reference: str | None
    first: pydicom.Dataset

    @property
    def sop_uids(self) -> list[str]:
        return list(dict.fromkeys(uid for uid, _frame in self.planes))

    @property
    def multiframe(self) -> bool:
        return any(frame is not None for _uid, frame in self.planes)


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    return pixel_array(ds).astype(np.float64)


def _planes(ds: pydicom.Dataset):
    """(position, orientation, (row, col) spacing, rescaled 2-D pixels, uid, frame) of each plane.

    Single-frame: Image Plane module (PS3.3 C.7.6.2).  Multi-frame (enhanced CT/MR/PET, PS3.3 C.7.6.16):
    per-frame functional groups, falling back to the shared ones, give each frame's Plane Position,
    Plane Orientation, Pixel Measures and Pixel Value Transformation.
    """
    uid = str(ds.SOPInstanceUID)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if frames > 1:
            raise DicomInputError(FEATURE_FAILED, f"{ds.filename}: multi-frame image without functional groups")
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        yield (_floats(ds.ImagePositionPatient), _floats(ds.ImageOrientationPatient), _floats(ds.PixelSpacing),
               _pixels(ds) * slope + intercept, uid, None)
        return
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()
    stack = _pixels(ds)
    stack = stack if frames > 1 else stack[None]

    def group(item, keyword):
        for source in (item, shared):
            if keyword in source and len(source[keyword].value):
                return source[keyword].value[0]
        return pydicom.Dataset()

    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        transform = group(item, "PixelValueTransformationSequence")
        slope = float(transform.get("RescaleSlope", 1) or 1)
        intercept = float(transform.get("RescaleIntercept", 0) or 0)
        yield (_floats(group(item, "PlanePositionSequence").ImagePositionPatient),
               _floats(group(item, "PlaneOrientationSequence").ImageOrientationPatient),
               _floats(group(item, "PixelMeasuresSequence").PixelSpacing),
               stack[index] * slope + intercept, uid, index + 1)


def load_volume(files: list[Path], series_uid: str) -> Volume:
    """Stack a series' planes along the slice normal (single-frame files or enhanced multi-frame)."""
    if not files:
        raise DicomInputError(SEG_REFERENCES_MISSING, f"series {series_uid} has no files on disk")
    datasets = [read_full(p) for p in files]
    for ds, path in zip(datasets, files):
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise DicomInputError(MISSING_PIXEL_DATA, f"{path}: no Pixel Data (7FE0,0010): image pixel module missing")
    planes = [plane for ds in datasets for plane in _planes(ds)]
    orientation = planes[0][1]
    normal = np.cross(orientation[:3], orientation[3:])
    planes.sort(key=lambda plane: float(np.dot(normal, plane[0])))
    image = sitk.GetImageFromArray(np.stack([plane[3] for plane in planes]))
    positions = [plane[0] for plane in planes]
    row_mm, col_mm = planes[0][2]
    slice_mm = (float(np.linalg.norm(positions[-1] - positions[0])) / (len(planes) - 1)
                if len(planes) > 1 else float(datasets[0].get("SliceThickness", 1) or 1))
    image.SetSpacing((col_mm, row_mm, slice_mm or 1.0))
    image.SetOrigin(tuple(positions[0]))
    image.SetDirection(tuple(np.column_stack([orientation[:3], orientation[3:], normal]).ravel()))
    return Volume(image, [(plane[4], plane[5]) for plane in planes],
                  str(datasets[0].get("FrameOfReferenceUID", "")) or None, datasets[0])


# -- computing ---------------------------------------------------------------------------------------


def radiomics_features(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """pyradiomics first-order and shape features of ``mask`` == 1 on ``image``."""
    from radiomics import featureextractor

    extractor = featureextractor.RadiomicsFeatureExtractor()
    extractor.disableAllFeatures()
    for name in RADIOMICS_CLASSES:
        extractor.enableFeatureClassByName(name)
    result = extractor.execute(image, mask, label=1)
    return {k: float(v) for k, v in result.items() if k.startswith("original_")}


def _radiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__).lstrip("v")


def alg_uri(alg: str, version: str) -> str:
    """MI-CDM ``alg_system``: a URI naming the algorithm and its version (pyradiomics: its PyPI
    release; radfed's own parametric-map statistics: a radfed URN)."""
    if alg == "pyradiomics":
        return f"https://pypi.org/project/pyradiomics-bhklab/{version}/"
    return f"urn:radfed:{alg}:{version}"


def parametric_statistics(map_volume: Volume, mask: sitk.Image) -> dict[str, tuple[float, str]] | None:
    """RADFED statistics of the ROI on an ADC or PET map, or ``None`` when the series is no such map."""
    first = map_volume.first
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    modality = str(first.get("Modality", ""))
    if "ADC" not in image_type and modality != "PT":
        return None
    resampled = sitk.Resample(mask, map_volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    inside = sitk.GetArrayFromImage(resampled) > 0
    if not inside.any():
        return None
    values = sitk.GetArrayFromImage(map_volume.image)[inside]
    if modality == "PT":
        units = str(first.get("Units", "")).upper()
        if units != "GML":
            raise DicomInputError(FEATURE_FAILED, f"PET series units {units!r}: only SUVbw maps (Units GML) are read")
        return {"suv_max": (float(values.max()), "g/mL"), "suv_mean": (float(values.mean()), "g/mL")}
    # ADC: vendors store 10^-6 mm2/s (= um2/s); a map already in mm2/s has values far below 1.
    if float(np.abs(values).max()) < 0.1:
        values = values * 1e6
    return {"adc_mean": (float(values.mean()), "um2/s"), "adc_min": (float(values.min()), "um2/s")}


# -- regions of interest ----------------------------------------------------------------------------


def seg_masks(seg: hd.seg.Segmentation, volume: Volume):
    """(segment number, label, boolean z/y/x mask) of each SEG segment on ``volume``'s grid."""
    for number in seg.segment_numbers:
        label = str(seg.get_segment_description(number).segment_label or f"segment {number}")
        if volume.multiframe:
            uid = volume.planes[0][0]
            # Frames the SEG does not name are empty (highdicom omits empty frames when writing).
            pixels = seg.get_pixels_by_source_frame(uid, [frame for _uid, frame in volume.planes],
                                                    segment_numbers=[number], combine_segments=True, relabel=True,
                                                    assert_missing_frames_are_empty=True)
        else:
            pixels = seg.get_pixels_by_source_instance(volume.sop_uids, segment_numbers=[number],
                                                       combine_segments=True, relabel=True)
        yield number, label, pixels > 0


def rtstruct_references(structure: pydicom.Dataset) -> set[tuple[str, str]]:
    """(series, SOP instance) of every image the structure set's contours name (PS3.3 C.8.8.6)."""
    series_uid = ""
    for frame in structure.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                series_uid = str(series.SeriesInstanceUID)
    found = set()
    for roi in structure.get("ROIContourSequence", []) or []:
        for contour in roi.get("ContourSequence", []) or []:
            for image in contour.get("ContourImageSequence", []) or []:
                found.add((series_uid, str(image.ReferencedSOPInstanceUID)))
    return found


def rtstruct_masks(structure: pydicom.Dataset, volume: Volume):
    """(ROI number, ROIName, mask) of each RTSTRUCT ROI, rasterised on ``volume``'s grid.

    CLOSED_PLANAR contours (PS3.3 C.8.8.6.1) are mapped from patient coordinates to continuous voxel
    indices; a voxel is inside when its centre is inside the polygon.  Contours on the same slice
    combine by XOR, so an inner contour cuts a hole, as the major planning systems draw them.
    """
    from matplotlib.path import Path as Polygon

    names = {int(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}")
             for r in structure.get("StructureSetROISequence", []) or []}
    depth, rows, cols = sitk.GetArrayViewFromImage(volume.image).shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    for roi in structure.get("ROIContourSequence", []) or []:
        number = int(roi.ReferencedROINumber)
        mask = np.zeros((depth, rows, cols), bool)
        for contour in roi.get("ContourSequence", []) or []:
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            index = np.array([volume.image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
            z = int(round(float(index[:, 2].mean())))
            if not 0 <= z < depth or len(index) < 3:
                continue
            inside = Polygon(index[:, :2]).contains_points(centres).reshape(rows, cols)
            mask[z] ^= inside
        yield number, names.get(number, f"ROI {number}"), mask


# -- the run -----------------------------------------------------------------------------------------


class FeatureExtractor:
    """Extracts features for the segmentations of one CDM."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.vocabulary = Vocabulary(engine)
        self.report = FeatureReport()

    def _concept(self, conn, code: str, vocabulary: str = "RADFED") -> int:
        return self.vocabulary.concept_for(vocabulary, code[:50], code, "Measurement", conn).concept_id

    def segmentation_rows(self, series_uid: str | None = None) -> list:
        # only series held here as files: an ImagingStudy known from FHIR alone has nothing to segment yet
        query = select(IMAGE_OCCURRENCE).where(IMAGE_OCCURRENCE.c.modality_source_value.in_(("SEG", "RTSTRUCT")),
                                               IMAGE_OCCURRENCE.c.local_path.is_not(None))
        if series_uid:
            query = query.where(or_(IMAGE_OCCURRENCE.c.image_series_uid == series_uid,
                                    IMAGE_OCCURRENCE.c.referenced_series_uid == series_uid))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(IMAGE_OCCURRENCE.c.image_series_uid)).mappings())

    def run(self, series_uid: str | None = None) -> FeatureReport:
        for row in self.segmentation_rows(series_uid):
            self.process(row)
        return self.report

    def process(self, row) -> None:
        """Features of one segmentation row; its bad input is quarantined, never raised."""
        self.report.segmentations += 1
        try:
            self.extract(row)
        except DicomInputError as exc:
            self._reject(row, exc.reason_code, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad segmentation never stops the run
            self._reject(row, FEATURE_FAILED, f"{type(exc).__name__}: {exc}")

    def _reject(self, row, reason_code: str, reason: str) -> None:
        with self.engine.begin() as conn:
            quarantine(conn, "dicom", reason_code, f"features of segmentation {row['image_series_uid']}: {reason}",
                       source_file=row["local_path"], resource_type=row["sop_class_uid"],
                       resource_id=row["image_series_uid"])
        self.report.quarantined[reason_code] = self.report.quarantined.get(reason_code, 0) + 1

    def _series_row(self, conn, series_uid: str):
        return conn.execute(select(IMAGE_OCCURRENCE).where(
            IMAGE_OCCURRENCE.c.image_occurrence_id == stable_id("dicom-series", series_uid))).mappings().first()

    def extract(self, seg_row) -> None:
        seg_files = series_files(seg_row["local_path"], seg_row["image_series_uid"])
        if not seg_files:
            raise DicomInputError(SEG_REFERENCES_MISSING, "the segmentation file itself is no longer on disk")
        if seg_row["modality_source_value"] == "RTSTRUCT":
            structure = read_full(seg_files[0])
            referenced = rtstruct_references(structure)
            rois = lambda volume: rtstruct_masks(structure, volume)  # noqa: E731
        else:
            seg = hd.seg.segread(seg_files[0])
            referenced = {(str(series), str(sop)) for _study, series, sop in seg.get_source_image_uids()}
            rois = lambda volume: seg_masks(seg, volume)  # noqa: E731
        ref_series = seg_row["referenced_series_uid"] or next(iter({s for s, _ in referenced}), None)
        with self.engine.connect() as conn:
            image_row = self._series_row(conn, ref_series) if ref_series else None
            study_rows = list(conn.execute(select(IMAGE_OCCURRENCE).where(
                IMAGE_OCCURRENCE.c.image_study_uid == seg_row["image_study_uid"],
                IMAGE_OCCURRENCE.c.modality_source_value.in_(("MR", "PT", "CT")),
                IMAGE_OCCURRENCE.c.image_series_uid != (ref_series or ""))).mappings())
        if image_row is None:
            raise DicomInputError(SEG_REFERENCES_MISSING, f"referenced image series {ref_series} is not indexed")
        volume = load_volume(series_files(image_row["local_path"], ref_series), ref_series)
        absent = sorted(sop for _series, sop in referenced if sop not in set(volume.sop_uids))
        if absent:
            raise DicomInputError(SEG_REFERENCES_MISSING,
                                  f"{len(absent)} referenced source image(s) absent from series {ref_series}, "
                                  f"e.g. {absent[0]}")
        maps = []
        for row in study_rows:
            try:
                candidate = load_volume(series_files(row["local_path"], row["image_series_uid"]), row["image_series_uid"])
            except DicomInputError:
                continue  # not a usable map; its own problems surface when it is segmented
            if candidate.frame_of_reference == volume.frame_of_reference:
                maps.append((row, candidate))
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        version = _radiomics_version()
        for number, label, array in rois(volume):
            if not array.any():
                continue
            mask = sitk.GetImageFromArray(array.astype(np.uint8))
            mask.CopyInformation(volume.image)
            finding_id = stable_id("image-finding", seg_row["image_series_uid"], number)
            rows = []
            for name, value in radiomics_features(volume.image, mask).items():
                if not np.isfinite(value):
                    continue
                rows.append(self._row(image_row, label, finding_id, name, value, None, "pyradiomics", version,
                                      "type_radiomics", now, ("Radiomics", name)))
                if name in RADIOMICS_AS_RADFED:
                    code, unit = RADIOMICS_AS_RADFED[name]
                    rows.append(self._row(image_row, label, finding_id, code, value, unit, "pyradiomics", version,
                                          "type_radiomics", now, ("RADFED", code)))
            for map_row, map_volume in maps:
                stats = parametric_statistics(map_volume, mask)
                for code, (value, unit) in (stats or {}).items():
                    rows.append(self._row(map_row, label, finding_id, code, value, unit, PARAMETRIC_ALG,
                                          hd.__version__, "type_parametric_map", now, ("RADFED", code)))
            self._write(rows)

    def _row(self, image_row, label, finding_id, name, value, unit, alg, version, type_code, now, concept):
        return {
            "image_feature_id": stable_id("image-feature", image_row["image_series_uid"], label, name, alg),
            "person_id": image_row["person_id"],
            "image_occurrence_id": image_row["image_occurrence_id"],
            "_when": (image_row["image_occurrence_date"], image_row["image_occurrence_datetime"],
                      image_row["visit_occurrence_id"]),
            "_concept": concept,
            "_type": type_code,
            "image_feature_source_value": name[:255],
            "image_finding_id": finding_id,
            "anatomic_site_concept_id": image_row["anatomic_site_concept_id"],
            "roi_label": label[:255],
            "value_as_number": value,
            "unit_source_value": unit,
            "alg_system": alg_uri(alg, version),
            "alg_version": version,
            "alg_datetime": now,
        }

    def _write(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.engine.begin() as conn:
            for row in rows:
                vocabulary, code = row.pop("_concept")
                row["image_feature_concept_id"] = self._concept(conn, code, vocabulary)
                row["image_feature_type_concept_id"] = self._concept(conn, row.pop("_type"))
                unit = row["unit_source_value"]
                row["unit_concept_id"] = self._concept(conn, unit, "UCUM") if unit else None
            # MI-CDM: each value is also a measurement row the feature links to (cdm/conformance.py)
            measurements = [feature_measurement(row, *row.pop("_when")) for row in rows]
            conn.execute(delete(IMAGE_FEATURE).where(
                IMAGE_FEATURE.c.image_feature_id.in_([r["image_feature_id"] for r in rows])))
            conn.execute(delete(MEASUREMENT).where(
                MEASUREMENT.c.measurement_id.in_([m["measurement_id"] for m in measurements])))
            conn.execute(insert(IMAGE_FEATURE), rows)
            conn.execute(insert(MEASUREMENT), measurements)
        self.report.features += len(rows)


def extract_features(engine: Engine, series_uid: str | None = None) -> FeatureReport:
    """Features for every segmentation (or those of/on ``series_uid``)."""
    return FeatureExtractor(engine).run(series_uid)


class FeatureWorker:
    """Extracts features in a background thread as segmentations are indexed (``dicom listen --features``).

    Attach :meth:`on_indexed` to :attr:`node.dicom.scp.InstanceStore.indexed_handlers`: every SEG or
    RTSTRUCT series written is queued, then processed one at a time, so receiving never waits for
    pyradiomics.  Results and quarantines accumulate in :attr:`report`.
    """

    def __init__(self, engine: Engine):
        import queue
        import threading

        self.engine = engine
        self.report = FeatureReport()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="radfed-features", daemon=True)
        self._thread.start()

    def on_indexed(self, headers) -> None:
        for header in headers:
            if header.modality in ("SEG", "RTSTRUCT"):
                self._queue.put(header.series_uid)

    def _run(self) -> None:
        while True:
            series_uid = self._queue.get()
            try:
                if series_uid is None:
                    return
                extractor = FeatureExtractor(self.engine)
                extractor.report = self.report
                for row in extractor.segmentation_rows(series_uid):
                    if row["image_series_uid"] == series_uid:
                        extractor.process(row)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until everything queued so far is processed."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
