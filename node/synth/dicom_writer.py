"""DICOM Part 10 files for the synthetic imaging studies (PS3.10 file format, PS3.3 IODs).

Small volumes (32 x 32 x 8) with a lesion whose intensities carry the same planted signal as the
FHIR image-feature Observations (ADC in the lesion of an ependymoma, SUV of an MPNST...):

* CT Image / MR Image Storage series, one file per slice, vendor-specific equipment attributes,
  transfer syntax and a private block (sites differ the way scanners do);
* an ADC map as an MR series with ImageType ``DERIVED\\PRIMARY\\ADC`` and pixel values in
  10^-6 mm2/s (the convention of the major vendors' diffusion packages);
* PET Image Storage with Units ``GML`` and RescaleSlope so that stored value x slope = SUVbw;
* DICOM SEG (highdicom) of the lesion on the anatomical series, or a multi-segment habitat map;
  the thoracic site contours its lung lesions in an RT Structure Set instead (RTSTRUCT, PS3.3 A.19).

PatientID is the patient's MRN (the FHIR Patient identifier value); study and series UIDs are the
ones the FHIR ImagingStudy names.  Files go to ``dicom/<PatientID>/<StudyUID>/<NN_MOD>/IMnnnnn.dcm``.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from node.synth import codes as C
from node.synth import geometry as G
from node.synth.geometry import PIXEL_MM, SHAPE, SLICE_MM
from node.synth.ground_truth import GroundTruth
from node.synth.ids import dicom_uid, rng
from node.synth.sites import Site

IMPLEMENTATION_UID = "2.25.190373298216148853213327196436093960522"  # fixed: reproducible file meta
_PRIVATE = {  # vendor private blocks (creator, group) as the real scanners write them
    "SIEMENS": ("SIEMENS CSA HEADER", 0x0029),
    "GE MEDICAL SYSTEMS": ("GEMS_PARM_01", 0x0043),
    "Philips": ("Philips MR Imaging DD 001", 0x2005),
}
#: DICOM coding scheme designators as FHIR system URIs (for the ground-truth code list).
_SCHEME_URIS = {"SCT": "http://snomed.info/sct", "DCM": "http://dicom.nema.org/resources/ontology/DCM",
                "99RADFED": "https://radfed.org/fhir/CodeSystem/radfed"}
DERIVED_KINDS = ("seg", "habitat", "rtstruct")
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # RT Referenced Study: detached study SOP class
CONTOUR_POINTS = 24
_HABITAT_CODES = {h: hd.sr.CodedConcept(h, "99RADFED", h.replace("habitat_", "Habitat: ").replace("_", " "))
                  for h in C.HABITATS}


class DicomSink:
    """Receives imaging study descriptions from the cohorts and renders those of selected patients."""

    def __init__(self, folder: Path, site: Site, seed: int, fraction: float, truth: GroundTruth,
                 codebook: C.CodeBook | None = None) -> None:
        self.folder, self.site, self.seed, self.fraction, self.truth = Path(folder), site, seed, fraction, truth
        self.codebook = codebook or C.CodeBook()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._decided: tuple[int, bool] | None = None
        self._files = self._series = 0
        self._patients: set[int] = set()
        self._last_image: tuple[Path, Dataset] | None = None

    def totals(self) -> dict:
        return {"files": self._files, "series": self._series, "patients": len(self._patients)}

    def _selected(self, index: int) -> bool:
        if self._decided is None or self._decided[0] != index:
            self._decided = (index, bool(rng(self.seed, self.site.index, index, "dicom").random() < self.fraction))
        return self._decided[1]

    def study(self, ctx, spec: dict) -> None:
        if not self._selected(ctx.index):
            return
        self._patients.add(ctx.index)
        study_dir = self.folder / ctx.mrn / spec["study_uid"]
        volumes = _volumes(spec, rng(self.seed, spec["study_uid"]))
        frame_uid = dicom_uid(self.seed, spec["study_uid"], "frame")
        images: dict[str, list[Dataset]] = {}
        for s in spec["series"]:
            if s["kind"] in DERIVED_KINDS:
                continue
            images[s["kind"]] = [self._image(ctx, spec, s, frame_uid, z, volumes[s["kind"]][z]) for z in range(SHAPE[0])]
            self._save_series(study_dir, s, images[s["kind"]])
        for s in spec["series"]:
            if s["kind"] in DERIVED_KINDS:
                source = images[next(k for k in ("t2", "t1", "t1c", "ct") if k in images)]
                if s["kind"] == "rtstruct":
                    derived = self._structure_set(ctx, spec, s, source, volumes)
                else:
                    derived = self._segmentation(spec, s, source, volumes)
                self._save_series(study_dir, s, [derived])
        self.truth.add(f"dicom/{self.site.name}", "studies")

    # -- files ---------------------------------------------------------------------------------
    def _save_series(self, study_dir: Path, series: dict, datasets: list[Dataset]) -> None:
        folder = study_dir / f"{series['number']:02d}_{series['modality']}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, ds in enumerate(datasets, start=1):
            path = folder / f"IM{n:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
        if series["kind"] not in DERIVED_KINDS:
            self._last_image = (folder, datasets[-1])
        self._files += len(datasets)
        self._series += 1

    def corrupt_file(self) -> None:
        """Plant one more slice of a real series whose transfer was cut off inside Pixel Data."""
        if self._last_image is None:
            return
        folder, template = self._last_image
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = dicom_uid(self.seed, ds.SeriesInstanceUID, "corrupt")
        ds.InstanceNumber = SHAPE[0] + 1
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        bad = folder / f"IM{SHAPE[0] + 1:05d}.dcm"
        bad.write_bytes(data[: len(data) - len(ds.PixelData) // 2])
        self.truth.bad(site=self.site.name, kind="corrupt_dicom", file=str(bad.relative_to(self.folder.parent.parent)),
                       sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                       expected="quarantined: truncated file, Pixel Data shorter than Rows x Columns x BitsAllocated")
        self._unknown_patient(template)

    def _unknown_patient(self, template: Dataset) -> None:
        """A valid image whose PatientID matches no Patient of the export (a study from another system)."""
        ds = copy.deepcopy(template)
        mrn = f"{self.site.index:02d}9999999"
        ds.PatientID, ds.PatientName = mrn, f"UNKNOWN^P{mrn}"
        ds.StudyInstanceUID = dicom_uid(self.seed, self.site.index, "unknown-patient", "study")
        ds.SeriesInstanceUID = dicom_uid(self.seed, self.site.index, "unknown-patient", "series")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = dicom_uid(self.seed, self.site.index, "unknown-patient", 1)
        ds.InstanceNumber = 1
        folder = self.folder / mrn / ds.StudyInstanceUID / f"01_{ds.Modality}"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / "IM00001.dcm", enforce_file_format=True)
        self.truth.bad(site=self.site.name, kind="dicom_unknown_patient",
                       file=str((folder / "IM00001.dcm").relative_to(self.folder.parent.parent)), patient_id=mrn,
                       sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                       expected="quarantined: PatientID matches no patient of this site")

    # -- datasets ------------------------------------------------------------------------------
    def _base(self, ctx, spec: dict, sop_class: str, sop_uid: str, transfer_syntax: str) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
        meta.ImplementationVersionName = "RADFED_SYNTH_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        day = spec["day"].strftime("%Y%m%d")
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = day
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "090000"
        ds.AccessionNumber = f"A{ctx.mrn[-6:]}{spec['study_uid'][-4:]}"
        ds.Manufacturer = self.site.vendor
        ds.InstitutionName = f"{self.site.name} hospital"
        ds.StationName = self.site.vendor_info["station"]
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = {"BRAIN": "MR BRAIN", "THIGH": "MR/PET SOFT TISSUE", "CHEST": "CT CHEST"}[spec["body"]]
        # Sites order the name components differently; both are valid PN values.
        ds.PatientName = f"SYNTH^P{ctx.mrn}" if self.site.vendor.startswith("GE") else f"P{ctx.mrn}^SYNTH"
        ds.PatientID = ctx.mrn
        ds.IssuerOfPatientID = self.site.name
        ds.PatientBirthDate = ctx.birth.strftime("%Y%m%d")
        ds.PatientSex = "M" if ctx.sex == "male" else "F"
        ds.StudyInstanceUID = spec["study_uid"]
        ds.StudyID = spec["study_uid"][-6:]
        ds.BodyPartExamined = spec["body"]
        return ds

    def _image(self, ctx, spec: dict, series: dict, frame_uid: str, z: int, pixels: np.ndarray) -> Dataset:
        kind = series["kind"]
        modality = {"ct": "CT", "pet": "PT"}.get(kind, "MR")
        sop_class = C.SOP_CLASSES[modality]
        ds = self._base(ctx, spec, sop_class, dicom_uid(self.seed, series["uid"], z), self.site.vendor_info["transfer_syntax"])
        ds.Modality = modality
        ds.SeriesInstanceUID = series["uid"]
        ds.SeriesNumber = series["number"]
        ds.SeriesDescription = series["description"]
        ds.ManufacturerModelName = self.site.vendor_info["ct_model" if modality == "CT" else "model"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = z + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [G.ORIGIN_MM[0], G.ORIGIN_MM[1], round(G.ORIGIN_MM[2] + z * SLICE_MM, 2)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.SpacingBetweenSlices = SLICE_MM
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            intercept = self.site.vendor_info["ct_intercept"]
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1.0, "HU"
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
            stored = np.clip(pixels - intercept, 0, 65535).astype(np.uint16)
        elif modality == "PT":
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.Units = "GML"  # SUV body weight: stored x slope is SUVbw (g/ml)
            ds.SUVType = "BW"
            ds.CountsSource, ds.SeriesType = "EMISSION", ["STATIC", "IMAGE"]
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.DecayCorrection = "START"
            ds.ImageIndex = z + 1
            ds.NumberOfSlices = SHAPE[0]
            ds.FrameReferenceTime = 0.0
            ds.ActualFrameDuration = 180000
            ds.PatientWeight = 70.0
            rp = Dataset()
            rp.Radiopharmaceutical = "Fluorodeoxyglucose"
            rp.RadionuclideTotalDose = 250_000_000.0
            rp.RadionuclideHalfLife = 6586.2
            rp.RadiopharmaceuticalStartTime = "080000"
            ds.RadiopharmaceuticalInformationSequence = [rp]
            slope = 0.001
            ds.RescaleIntercept, ds.RescaleSlope = 0.0, slope
            stored = np.clip(np.round(pixels / slope), 0, 65535).astype(np.uint16)
        else:
            adc = kind == "adc"
            ds.ImageType = ["DERIVED", "PRIMARY", "ADC"] if adc else ["ORIGINAL", "PRIMARY", "M"]
            ds.ScanningSequence = "EP" if adc else "SE"
            ds.SequenceVariant = "SK" if adc else "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 4000.0 if kind != "t1" else 500.0
            ds.EchoTime = 80.0 if kind != "t1" else 10.0
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 3.0 if self.site.vendor != "Philips" else 1.5
            ds.ImagedNucleus = "1H"
            if adc:
                ds.RescaleIntercept, ds.RescaleSlope = 0.0, 1.0
                ds.RescaleType = "10^-6 mm2/s"
            stored = np.clip(np.round(pixels), 0, 65535).astype(np.uint16)
        creator, group = _PRIVATE[self.site.vendor]
        block = ds.private_block(group, creator, create=True)
        block.add_new(0x10, "LO", f"radfed-synth {kind}")
        ds.PixelData = stored.tobytes()
        return ds

    def _structure_set(self, ctx, spec: dict, series: dict, source: list[Dataset], volumes: dict) -> Dataset:
        """RT Structure Set (PS3.3 A.19): the lesion as one CLOSED_PLANAR contour per slice it cuts."""
        ds = self._base(ctx, spec, C.SOP_CLASSES["RTSTRUCT"], dicom_uid(self.seed, series["uid"], 0),
                        self.site.vendor_info["transfer_syntax"])
        ds.Modality = "RTSTRUCT"
        ds.SeriesInstanceUID, ds.SeriesNumber = series["uid"], series["number"]
        ds.SeriesDescription = series["description"]
        ds.ManufacturerModelName = "radfed-synth RT contouring"
        ds.OperatorsName = ""
        ds.InstanceNumber = 1
        ds.StructureSetLabel = "TARGETS"
        ds.StructureSetDate, ds.StructureSetTime = spec["day"].strftime("%Y%m%d"), "093000"
        frame_uid = source[0].FrameOfReferenceUID

        def ref(image: Dataset) -> Dataset:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
            return item

        rt_series = Dataset()
        rt_series.SeriesInstanceUID = source[0].SeriesInstanceUID
        rt_series.ContourImageSequence = [ref(im) for im in source]
        rt_study = Dataset()
        rt_study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
        rt_study.ReferencedSOPInstanceUID = spec["study_uid"]
        rt_study.RTReferencedSeriesSequence = [rt_series]
        frame = Dataset()
        frame.FrameOfReferenceUID = frame_uid
        frame.RTReferencedStudySequence = [rt_study]
        ds.ReferencedFrameOfReferenceSequence = [frame]
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, frame_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = "lesion-1", "MANUAL"
        ds.StructureSetROISequence = [roi]
        contours = []
        centre, radius = volumes["lesion_geometry"]
        for z, image in enumerate(source):
            dz = (z - centre[0]) * SLICE_MM
            r_mm = radius * PIXEL_MM
            if abs(dz) >= r_mm:
                continue
            # The sphere's cross-section at this slice, as a polygon in patient coordinates (mm).
            r_slice = float(np.sqrt(r_mm ** 2 - dz ** 2))
            x0, y0, zpos = image.ImagePositionPatient
            cx, cy = float(x0) + centre[2] * PIXEL_MM, float(y0) + centre[1] * PIXEL_MM
            angles = np.linspace(0, 2 * np.pi, CONTOUR_POINTS, endpoint=False)
            points = np.stack([cx + r_slice * np.cos(angles), cy + r_slice * np.sin(angles),
                               np.full(CONTOUR_POINTS, float(zpos))], axis=1)
            contour = Dataset()
            contour.ContourImageSequence = [ref(image)]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = CONTOUR_POINTS
            contour.ContourData = [round(float(v), 3) for v in points.ravel()]
            contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ReferencedROINumber = 1
        roi_contour.ContourSequence = contours
        ds.ROIContourSequence = [roi_contour]
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
        ds.RTROIObservationsSequence = [observation]
        ds.ApprovalStatus = "UNAPPROVED"
        return ds

    def _segmentation(self, spec: dict, series: dict, source: list[Dataset], volumes: dict) -> Dataset:
        if series["kind"] == "habitat":
            masks = volumes["habitat"]
            mask = np.stack([masks[h] for h in C.HABITATS], axis=-1).astype(np.uint8)
            descriptions = [
                hd.seg.SegmentDescription(
                    segment_number=i + 1, segment_label=h,
                    segmented_property_category=codes.SCT.Tissue, segmented_property_type=_HABITAT_CODES[h],
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=hd.AlgorithmIdentificationSequence(
                        name="radfed-synth habitat clustering", version="1", family=codes.cid7162.ArtificialIntelligence),
                    tracking_uid=dicom_uid(self.seed, series["uid"], "segment", i), tracking_id=h)
                for i, h in enumerate(C.HABITATS)]
        else:
            mask = volumes["lesion"].astype(np.uint8)
            descriptions = [hd.seg.SegmentDescription(
                segment_number=1, segment_label="lesion-1",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Neoplasm,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                tracking_uid=dicom_uid(self.seed, series["uid"], "segment", 0), tracking_id="lesion-1")]
        for d in descriptions:  # the coded concepts in the SEG go into ground truth's code list too
            for item in (d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0]):
                self.codebook.coding(_SCHEME_URIS.get(item.scheme_designator, item.scheme_designator),
                                     item.value, item.meaning)
        day = spec["day"]
        seg = hd.seg.Segmentation(
            source_images=source, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=series["uid"], series_number=series["number"],
            sop_instance_uid=dicom_uid(self.seed, series["uid"], 0), instance_number=1,
            manufacturer="radfed", manufacturer_model_name="synth", software_versions="1",
            device_serial_number=self.site.name, series_description=series["description"],
            content_date=day, content_time=dt.time(9, 30), series_date=day, series_time=dt.time(9, 30),
            omit_empty_frames=False,
        )
        # highdicom stamps the wall clock and fresh random UIDs; pin them so a seed gives the same bytes.
        seg.InstanceCreationDate = day.strftime("%Y%m%d")
        seg.InstanceCreationTime = "093000"
        dimension_uid = dicom_uid(self.seed, series["uid"], "dimension-organization")
        for elem in seg.iterall():
            if elem.keyword == "DimensionOrganizationUID":
                elem.value = dimension_uid
            elif elem.keyword == "ContributionDateTime":
                elem.value = day.strftime("%Y%m%d") + "093000"
        seg.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
        seg.file_meta.ImplementationVersionName = "RADFED_SYNTH_1"
        return seg


def _volumes(spec: dict, r: np.random.Generator) -> dict[str, np.ndarray]:
    """Voxel arrays (slices, rows, cols) for every series kind of the study, plus the lesion mask."""
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(float)
    lesion = spec["lesion"]
    # Lesion radius from its volume (cm3), kept inside the small matrix.
    radius_mm = (3 * lesion.get("volume_cm3", 20.0) * 1000 / (4 * np.pi)) ** (1 / 3)
    radius = float(np.clip(radius_mm / PIXEL_MM / 2.0, 3.0, 9.0))
    cx = 16.0 if lesion.get("midline", True) else 8.0
    if "longest_diameter_mm" in lesion:
        radius = float(np.clip(lesion["longest_diameter_mm"] / PIXEL_MM / 2, 2.0, 10.0))
    dist = np.sqrt(((x - cx)) ** 2 + (y - 16.0) ** 2 + ((z - 3.5) * SLICE_MM / PIXEL_MM) ** 2)
    mask = dist <= radius
    noise = lambda sd: r.normal(0, sd, SHAPE)  # noqa: E731
    out = {"lesion": mask, "lesion_geometry": ((3.5, 16.0, cx), radius)}
    out["t2"] = np.where(mask, 1400.0 * lesion.get("t2_ratio", 1.0) ** 0.3, 600.0) + noise(30)
    out["t1"] = np.where(mask, 300.0 + 900.0 * lesion.get("fat_fraction", 0.3), 500.0) + noise(25)
    out["t1c"] = np.where(mask, 1100.0, 450.0) + noise(30)
    out["adc"] = np.where(mask, lesion.get("adc", 800.0), 780.0) + noise(25)
    out["ct"] = np.where(mask, 40.0, -850.0) + noise(15)  # soft-tissue nodule in aerated lung (HU)
    if "suv_max" in lesion:
        # Peak SUV at the lesion centre falling off to the rim; necrotic core photopenic.
        core_radius = radius * np.sqrt(lesion.get("necrosis", 0.0))
        core = dist < core_radius
        peak = lesion["suv_max"] * (1 - 0.5 * np.abs(dist - core_radius) / radius)
        pet = np.where(mask, np.minimum(peak + np.abs(noise(0.03)), lesion["suv_max"]), 0.8 + noise(0.05))
        pet = np.clip(np.where(core, 0.6, pet), 0.0, None)
        # The hottest viable voxel carries exactly the SUVmax the FHIR feature reports.
        viable = np.where(mask & ~core, peak, -np.inf)
        pet[np.unravel_index(int(np.argmax(viable)), SHAPE)] = lesion["suv_max"]
        out["pet"] = pet
    if spec["cohort"] == "glioma_habitat":
        # The same shells the FHIR biopsy coordinates were placed in (node.synth.geometry).
        out["habitat"] = G.habitat_masks()
        tumour = ~out["habitat"]["habitat_oedema"] & np.any(list(out["habitat"].values()), axis=0)
        out["t1c"] = np.where(tumour, 1100.0, np.where(out["habitat"]["habitat_oedema"], 700.0, 450.0)) + noise(30)
        out["t1c"][out["habitat"]["habitat_necrotic"]] = 300.0
    return out
