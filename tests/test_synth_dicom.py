"""The synthetic generator's DICOM side: Part 10 files pydicom reads, SEGs highdicom reads, UIDs and
PatientID consistent with the FHIR export, and the planted imaging signal present in the pixels."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node import fhir_profile as fp
from node.synth import SynthOptions, generate
from node.synth.codes import SOP_CLASSES


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth-dicom")
    generate(out, SynthOptions(sites=3, patients=120, seed=21, dicom=True, dicom_fraction=0.6))
    return out


@pytest.fixture(scope="module")
def truth(network) -> dict:
    return json.loads((network / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def corrupt(truth) -> set[str]:
    """Every planted bad DICOM file (truncated, or for a patient the export does not have)."""
    return {b["file"] for b in truth["bad_records"] if b["kind"] in ("corrupt_dicom", "dicom_unknown_patient")}


@pytest.fixture(scope="module")
def fhir(network):
    """Per site: MRN -> Patient id, ImagingStudy by study UID, and image-feature values by series UID."""
    out = {}
    for site_dir in sorted(network.glob("site-*")):
        mrn, studies, feats = {}, {}, collections.defaultdict(dict)
        for line in (site_dir / "fhir" / "Patient.000.ndjson").read_text().splitlines():
            p = json.loads(line)
            mrn[p["identifier"][0]["value"]] = p["id"]
        for line in (site_dir / "fhir" / "ImagingStudy.000.ndjson").read_text().splitlines():
            s = json.loads(line)
            studies[s["identifier"][0]["value"].removeprefix("urn:oid:")] = s
        for line in (site_dir / "fhir" / "Observation.000.ndjson").read_text().splitlines():
            try:
                o = json.loads(line)
            except json.JSONDecodeError:
                continue
            coding = o.get("code", {}).get("coding", [{}])[0]
            if coding.get("system") == fp.RADFED and "valueQuantity" in o and "component" in o:
                uid = o["component"][0]["valueString"]
                feats[uid][coding["code"]] = o["valueQuantity"]["value"]
        out[site_dir.name] = {"mrn": mrn, "studies": studies, "features": feats}
    return out


def dicom_files(network: Path, corrupt: set[str]):
    for path in sorted(network.glob("site-*/dicom/**/*.dcm")):
        rel = str(path.relative_to(network))
        if rel not in corrupt:
            yield path.parts[len(network.parts)], path


def series_volume(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The series' slices in order, and its voxels in real-world units (slope/intercept applied).

    Only the 8 slices the ImagingStudy announces; a planted truncated file is the 9th instance."""
    slices = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm") if p.name <= "IM00008.dcm"),
                    key=lambda d: int(d.InstanceNumber))
    assert len(slices) == 8
    slope = float(getattr(slices[0], "RescaleSlope", 1.0))
    intercept = float(getattr(slices[0], "RescaleIntercept", 0.0))
    return slices, np.stack([s.pixel_array for s in slices]).astype(float) * slope + intercept


def test_every_file_reads_and_matches_its_fhir_imaging_study(network, truth, corrupt, fhir):
    n = 0
    for site, path in dicom_files(network, corrupt):
        ds = pydicom.dcmread(path)
        assert ds.PatientID in fhir[site]["mrn"]
        study = fhir[site]["studies"][ds.StudyInstanceUID]
        assert study["subject"]["reference"] == f"Patient/{fhir[site]['mrn'][ds.PatientID]}"
        series = {s["uid"]: s for s in study["series"]}
        assert ds.SeriesInstanceUID in series
        assert series[ds.SeriesInstanceUID]["modality"]["code"] == ds.Modality
        assert ds.SOPClassUID == SOP_CLASSES[ds.Modality]
        if ds.Modality not in ("SEG", "RTSTRUCT"):
            assert ds.pixel_array.shape == (32, 32)
        n += 1
    assert n == sum(s["dicom"]["files"] for s in truth["sites"]) > 100


def test_corrupt_files_are_listed_and_unreadable(network, truth, fhir):
    truncated = [b for b in truth["bad_records"] if b["kind"] == "corrupt_dicom"]
    assert len(truncated) == 3
    for bad in truncated:
        with pytest.raises(Exception):
            pydicom.dcmread(network / bad["file"]).pixel_array


def test_an_image_of_an_unknown_patient_is_listed_and_otherwise_valid(network, truth, fhir):
    strays = [b for b in truth["bad_records"] if b["kind"] == "dicom_unknown_patient"]
    assert len(strays) == 3
    for bad in strays:
        ds = pydicom.dcmread(network / bad["file"])
        assert ds.pixel_array.shape == (32, 32)
        assert ds.PatientID == bad["patient_id"] and ds.PatientID not in fhir[bad["site"]]["mrn"]
        assert ds.StudyInstanceUID not in fhir[bad["site"]]["studies"]


def test_sites_write_their_vendors_transfer_syntax_and_private_block(network, truth, corrupt):
    seen = collections.defaultdict(set)
    for site, path in dicom_files(network, corrupt):
        ds = pydicom.dcmread(path)
        if ds.Modality in ("MR", "CT"):
            seen[site].add((ds.Manufacturer, str(ds.file_meta.TransferSyntaxUID)))
            assert any(elem.tag.is_private for elem in ds)
    expected = {s["name"]: {(s["vendor"], s["transfer_syntax"])} for s in truth["sites"]}
    assert dict(seen) == expected
    assert len({ts for v in expected.values() for _, ts in v}) == 2  # explicit and implicit VR little endian


def test_segmentations_read_with_highdicom_and_cover_the_lesion(network, corrupt):
    habitat_maps = lesions = 0
    for _, path in dicom_files(network, corrupt):
        if path.parent.name.endswith("_SEG"):
            seg = hd.seg.segread(path)
            ref_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
            source = [d for d in path.parent.parent.iterdir() if d != path.parent
                      and pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID == ref_series]
            assert len(source) == 1
            slices, _ = series_volume(source[0])
            mask = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in slices])
            assert mask.shape[:3] == (8, 32, 32)
            if seg.number_of_segments == 5:
                habitat_maps += 1
                assert all(mask[..., i].any() for i in range(5))
            else:
                lesions += 1
                assert 10 < mask.sum() < 8 * 32 * 32 / 2
    assert habitat_maps and lesions


def _lesion_stat(study_dir: Path, image_series_number: int, stat) -> float:
    seg_dir = next(study_dir.glob("*_SEG"))
    seg = hd.seg.segread(next(seg_dir.glob("*.dcm")))
    anatomy, _ = series_volume(next(study_dir.glob("01_*")))
    mask = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in anatomy])[..., 0].astype(bool)
    _, values = series_volume(next(study_dir.glob(f"{image_series_number:02d}_*")))
    return float(stat(values[mask]))


def test_adc_in_the_lesion_matches_the_fhir_feature_and_separates_pfa_from_pfb(network, truth, fhir):
    patients = [json.loads(line) for line in (network / truth["patients_file"]).read_text().splitlines()]
    by_group = collections.defaultdict(list)
    for p in patients:
        if p["cohort"] != "ependymoma":
            continue
        site = p["site"]
        folders = list((network / site / "dicom" / p["mrn"]).glob("*"))
        if not folders:
            continue
        study_dir = folders[0]
        adc_series = fhir[site]["studies"][study_dir.name]["series"][1]
        assert pydicom.dcmread(next((study_dir / "02_MR").glob("*.dcm"))).ImageType[2] == "ADC"
        measured = _lesion_stat(study_dir, 2, np.mean)
        assert measured == pytest.approx(fhir[site]["features"][adc_series["uid"]]["adc_mean"], rel=0.05)
        by_group[p["subtype"]].append(measured)
    assert len(by_group["PFA"]) >= 3 and len(by_group["PFB"]) >= 3
    assert max(by_group["PFA"]) < np.mean(by_group["PFB"]) or np.mean(by_group["PFA"]) < np.mean(by_group["PFB"]) - 200


def test_pet_is_suv_scaled_and_its_lesion_maximum_is_the_fhir_suvmax(network, truth, fhir):
    checked = 0
    for site_dir in sorted(network.glob("site-*")):
        for pet_dir in site_dir.glob("dicom/*/*/02_PT"):
            first = pydicom.dcmread(next(pet_dir.glob("*.dcm")))
            assert first.Units == "GML" and first.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife > 0
            series = first.SeriesInstanceUID
            expected = fhir[site_dir.name]["features"][series]["suv_max"]
            assert _lesion_stat(pet_dir.parent, 2, np.max) == pytest.approx(expected, rel=0.02)
            checked += 1
    assert checked >= 3


def test_dicom_output_is_byte_identical_for_a_seed(tmp_path):
    opts = dict(sites=2, patients=16, dicom=True, dicom_fraction=1.0)
    generate(tmp_path / "a", SynthOptions(seed=4, **opts))
    generate(tmp_path / "b", SynthOptions(seed=4, **opts))
    a = {str(p.relative_to(tmp_path / "a")): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.dcm"))}
    b = {str(p.relative_to(tmp_path / "b")): p.read_bytes() for p in sorted((tmp_path / "b").rglob("*.dcm"))}
    assert a and a == b


def test_thoracic_site_contours_lung_lesions_in_rtstruct_on_the_ct(network, truth, corrupt):
    from matplotlib.path import Path as Polygon

    rt_sites = {s["name"] for s in truth["sites"] if s["lung_contours"] == "RTSTRUCT"}
    assert rt_sites
    checked = 0
    for site in rt_sites:
        for rt_file in sorted((network / site / "dicom").glob("*/*/*_RTSTRUCT/IM00001.dcm")):
            rt = pydicom.dcmread(rt_file)
            assert rt.SOPClassUID == SOP_CLASSES["RTSTRUCT"] and rt.StructureSetROISequence[0].ROIName == "lesion-1"
            slices, hu = series_volume(next(rt_file.parent.parent.glob("*_CT")))
            by_uid = {s.SOPInstanceUID: z for z, s in enumerate(slices)}
            referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
            inside, outside = [], []
            rows, cols = np.mgrid[0:32, 0:32]
            for contour in rt.ROIContourSequence[0].ContourSequence:
                z = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
                pts = np.array(contour.ContourData, float).reshape(-1, 3)
                assert np.allclose(pts[:, 2], float(slices[z].ImagePositionPatient[2]))
                x0, y0 = (float(v) for v in slices[z].ImagePositionPatient[:2])
                px = np.stack([(pts[:, 0] - x0) / 2.0, (pts[:, 1] - y0) / 2.0], axis=1)  # mm -> (col, row)
                hit = Polygon(px).contains_points(np.stack([cols.ravel(), rows.ravel()], axis=1)).reshape(32, 32)
                inside.extend(hu[z][hit])
                outside.extend(hu[z][~hit])
            assert np.mean(inside) > -100 and np.mean(outside) < -700  # soft-tissue nodule in aerated lung
            checked += 1
    assert checked >= 1


def test_biopsy_coordinates_fall_in_their_labelled_habitat_of_the_dicom_habitat_map(network, fhir):
    from node.synth import geometry as G
    from node.synth.codes import HABITATS

    shell = {h: i for i, (_, h) in enumerate(G.HABITAT_SHELLS)}
    agree = disagree = 0
    for site_dir in sorted(network.glob("site-*")):
        study_uid = {s["id"]: uid for uid, s in fhir[site_dir.name]["studies"].items()}
        for line in (site_dir / "fhir" / "Observation.000.ndjson").read_text().splitlines():
            try:
                obs = json.loads(line)
            except json.JSONDecodeError:
                continue
            if obs.get("code", {}).get("coding", [{}])[0].get("code") != fp.BIOPSY_LOCATION:
                continue
            folders = list(site_dir.glob(f"dicom/*/{study_uid[obs['derivedFrom'][0]['reference'].split('/')[1]]}"))
            if not folders:
                continue
            comps = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
            x, y, z = (comps[k]["valueQuantity"]["value"] for k in (fp.BIOPSY_X, fp.BIOPSY_Y, fp.BIOPSY_Z))
            label = comps[fp.HABITAT_LABEL]["valueCodeableConcept"]["coding"][0]["code"]
            seg_file = next(folders[0].glob("*_SEG/*.dcm"))
            seg = hd.seg.segread(seg_file)
            assert seg.SeriesInstanceUID == comps[fp.SERIES_INSTANCE_UID]["valueString"]
            slices, _ = series_volume(folders[0] / "01_MR")
            masks = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in slices])
            x0, y0, z0 = (float(v) for v in slices[0].ImagePositionPatient)
            voxel = (round((z - z0) / float(slices[0].SpacingBetweenSlices)), round((y - y0) / float(slices[0].PixelSpacing[0])),
                     round((x - x0) / float(slices[0].PixelSpacing[1])))
            found = [HABITATS[i] for i in np.nonzero(masks[voxel])[0]]
            assert len(found) == 1
            if found[0] == label:
                agree += 1
            else:  # the nearest voxel centre lies across a border: never more than one shell away
                assert abs(shell[found[0]] - shell[label]) == 1
                disagree += 1
    assert agree >= 10 and agree >= 3 * disagree


def test_codes_inside_segmentations_are_listed_in_ground_truth(network, truth, corrupt):
    listed = {(c["system"].rsplit("/", 1)[-1], c["code"]) for c in truth["codes"]}
    for _, path in dicom_files(network, corrupt):
        if path.parent.name.endswith("_SEG"):
            seg = pydicom.dcmread(path)
            for segment in seg.SegmentSequence:
                code = segment.SegmentedPropertyTypeCodeSequence[0]
                system = {"SCT": "sct", "99RADFED": "radfed"}[code.CodingSchemeDesignator]
                value = code.get("CodeValue") or code.get("LongCodeValue")  # > 16 characters: LongCodeValue
                assert (system, value) in listed
