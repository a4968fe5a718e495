"""PACS pull against a real Orthanc: C-FIND, then C-MOVE (to our listener) or C-GET, series by series.

MRN001's study mixes JPEG 2000, JPEG lossless, RLE, JPEG-LS, deflated, big endian and uncompressed
instances, a retired storage class and a Parametric Map: every instance must arrive, in the encoding
Orthanc stores it in, and be indexed.  MRN002's study is damaged at the PACS (two of its stored CT
files are gone from Orthanc's storage area, as after a disk fault): Orthanc fails those
sub-operations for real, and the pull must say so and exit non-zero.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from coordinator.natsproc import free_port, free_ports
from node.cli import main
from node.dicom.pull import PullError, pull
from test_dicom_fixtures import add_person, make_mixed_study, make_study

IO = tables["image_occurrence"]
SR = tables["source_record"]
BROKEN = 2  # CT files of MRN002 removed from Orthanc's storage


def _orthanc_files(storage: Path) -> dict[str, Path]:
    """SOP Instance UID -> Orthanc's stored file (its attachments are plain DICOM files)."""
    found = {}
    for path in storage.rglob("*"):
        if path.is_file() and not path.name.startswith("index"):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            except Exception:  # noqa: BLE001 - Orthanc's own database files
                continue
            found[str(ds.SOPInstanceUID)] = path
    return found


def _send(port: int, paths: list[Path]) -> None:
    """C-STORE each file to Orthanc in its own encoding: one context per (class, syntax), each offering
    only that syntax (storescu adds the uncompressed ones, which Orthanc prefers, then must decode)."""
    from pynetdicom import AE, build_context

    datasets = [pydicom.dcmread(p) for p in paths]
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    ae = AE(ae_title="MODALITY")
    assoc = ae.associate("127.0.0.1", port, contexts=[build_context(c, t) for c, t in pairs], ae_title="PACS")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000, ds.filename
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc on free loopback ports (HTTP off, no storage cache), knows RADFEDPULL as a move target."""
    home = tmp_path_factory.mktemp("orthanc")
    dicom_port, move_port, http_port = free_ports(3)
    config = {
        "Name": "radfed-test-pacs", "StorageDirectory": str(home / "db"), "IndexDirectory": str(home / "db"),
        "DicomServerEnabled": True, "DicomAet": "PACS", "DicomPort": dicom_port,
        "HttpServerEnabled": False, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
        "DicomModalities": {"radfed": ["RADFEDPULL", "127.0.0.1", move_port]},
        "DicomAlwaysAllowStore": True, "Plugins": [], "ConcurrentJobs": 1, "MaximumStorageCacheSize": 0,
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(home / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if subprocess.run(["echoscu", "-aec", "PACS", "127.0.0.1", str(dicom_port)],
                              capture_output=True).returncode == 0:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        studies = {"MRN001": make_mixed_study(home / "MRN001", "MRN001", seed=0),
                   "MRN002": make_study(home / "MRN002", "MRN002", seed=1)}
        _send(dicom_port, sorted(home.rglob("*.dcm")))
        stored = _orthanc_files(home / "db")
        sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                   for p in home.joinpath("MRN001").rglob("*.dcm")}
        assert set(sources) <= set(stored), "Orthanc did not keep every instance sent"
        broken = sorted(pydicom.dcmread(p).SOPInstanceUID for p in studies["MRN002"]["ct_files"])[:BROKEN]
        for uid in broken:
            stored[uid].unlink()
        yield {"port": dicom_port, "move_port": move_port, "studies": studies, "sources": sources,
               "broken": broken}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _indexed(engine) -> set[str]:
    with engine.connect() as conn:
        return {k.split("|", 1)[1] for k in conn.execute(select(SR.c.source_key)).scalars() if k.startswith("dicom|")}


def _check_as_stored(data_dir: Path, sources: dict[str, Path]) -> None:
    """Every instance arrived in the encoding Orthanc holds it in, byte for byte in its data set."""
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in (data_dir / "dicom").rglob("*.dcm")}
    assert set(received) == set(sources)
    for uid, source in sources.items():
        ours, theirs = pydicom.dcmread(received[uid]), pydicom.dcmread(source)
        assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID, source.name
        pixels = "PixelData" if "PixelData" in theirs else "FloatPixelData"
        assert ours[pixels].value == theirs[pixels].value, source.name


def test_c_move_pulls_a_mixed_study_then_only_what_is_new(any_cdm, tmp_path, orthanc):
    add_person(any_cdm, "MRN001")
    study = orthanc["studies"]["MRN001"]
    report = pull(any_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  patient="MRN001", mode="move", move_port=orthanc["move_port"])
    assert report.study_uids == [study["study"]]
    assert (report.expected, report.received, report.failed) == (study["count"], study["count"], 0), report.summary()
    assert report.exit_code == 0 and not report.index.quarantined
    assert _indexed(any_cdm) == set(orthanc["sources"])
    _check_as_stored(tmp_path / "data", orthanc["sources"])
    with any_cdm.connect() as conn:
        ct = conn.execute(select(IO).where(IO.c.image_occurrence_id == stable_id("dicom-series", study["ct"]))).mappings().one()
    assert ct["image_source"] == "pull" and ct["instance_count"] == 8
    # Incremental: every series is complete here, nothing is transferred again.
    again = pull(any_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                 patient="MRN001", mode="move", move_port=orthanc["move_port"])
    assert again.skipped_series == 6 and again.received == 0 and again.failed == 0 and again.exit_code == 0
    assert "6 series already complete here, skipped" in again.summary()
    # --force fetches them again: the same content is one instance, nothing is quarantined.
    forced = pull(any_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  patient="MRN001", mode="move", move_port=orthanc["move_port"], force=True)
    assert forced.received == study["count"] and forced.failed == 0 and forced.exit_code == 0
    assert forced.index.indexed == study["count"] and not forced.index.quarantined  # the same files again


def test_c_get_pulls_a_mixed_study(sqlite_cdm, tmp_path, orthanc):
    add_person(sqlite_cdm, "MRN001")
    later = pull(sqlite_cdm, tmp_path / "d1", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                 since=dt.date(2026, 3, 2), mode="get")
    assert later.studies == [] and later.exit_code == 0
    report = pull(sqlite_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  patient="MRN001", since=dt.date(2026, 3, 1), mode="get")
    count = orthanc["studies"]["MRN001"]["count"]
    assert (report.expected, report.received, report.failed) == (count, count, 0), report.summary()
    assert report.exit_code == 0 and report.index.indexed == count
    _check_as_stored(tmp_path / "data", orthanc["sources"])


def test_features_of_the_pulled_compressed_study_equal_the_uncompressed(sqlite_cdm, tmp_path, orthanc):
    """Radiomics on the CT (JPEG 2000 / JPEG lossless / RLE slices) and deflated SEG Orthanc sent
    equal those on the same images uncompressed, value for value."""
    import numpy as np

    from node.dicom.features import extract_features
    from node.dicom.index import index_paths
    from test_dicom_fixtures import SYNTAX

    add_person(sqlite_cdm, "MRN001")
    study = orthanc["studies"]["MRN001"]
    pull(sqlite_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
         patient="MRN001", mode="get")
    compressed = extract_features(sqlite_cdm, study["ct"])
    assert compressed.segmentations == 1 and not compressed.quarantined, compressed.quarantined

    from cdm.db import create_cdm, open_engine

    plain_cdm = open_engine(tmp_path / "plain.sqlite")
    create_cdm(plain_cdm)
    add_person(plain_cdm, "MRN001")
    plain = tmp_path / "plain"
    for source in [*study["ct_files"], study["seg_path"]]:
        target = plain / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        ds = pydicom.dcmread(target)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = SYNTAX["none"]
        ds.save_as(target, enforce_file_format=True)
    assert index_paths(plain_cdm, [plain]).indexed == 9
    report = extract_features(plain_cdm, study["ct"])
    assert report.segmentations == 1 and not report.quarantined, report.quarantined

    def values(engine):
        feature = tables["image_feature"]
        with engine.connect() as conn:
            return dict(conn.execute(select(feature.c.image_feature_source_value, feature.c.value_as_number)
                                     .where(feature.c.alg_system.startswith("https://pypi.org/project/pyradiomics")))
                        .all())

    got, expected = values(sqlite_cdm), values(plain_cdm)
    assert len(expected) > 20 and set(got) == set(expected)
    assert all(np.isclose(got[k], expected[k], rtol=0, atol=0) for k in expected)
    plain_cdm.dispose()


def test_a_study_the_pacs_fails_in_part_is_reported_and_exits_non_zero(sqlite_cdm, tmp_path, orthanc):
    add_person(sqlite_cdm, "MRN002")
    study = orthanc["studies"]["MRN002"]
    report = pull(sqlite_cdm, tmp_path / "get", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  patient="MRN002", mode="get", retries=1)
    assert report.exit_code == 3
    assert (report.expected, report.received, report.failed) == (25, 25 - BROKEN, BROKEN), report.summary()
    ct = next(s for s in report.studies[0].series if s.series_uid == study["ct"])
    assert ct.missing == set(orthanc["broken"]) and ct.attempts == 2 and ct.problems
    assert _indexed(sqlite_cdm) == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                    for p in Path(study["ct_files"][0]).parent.parent.rglob("*.dcm")} - set(ct.missing)
    # The same through the CLI with C-MOVE: the summary names the series and the PACS's status; exit 3.
    db = tmp_path / "cli.sqlite"
    runner = CliRunner()
    assert runner.invoke(main, ["--db", str(db), "init"]).exit_code == 0
    from cdm.db import open_engine

    engine = open_engine(db)
    add_person(engine, "MRN002")
    (tmp_path / "node.toml").write_text('[site]\ndata_dir = "store"\n')
    result = runner.invoke(main, ["--config", str(tmp_path / "node.toml"), "--db", str(db), "dicom", "pull",
                                  "--pacs", f"127.0.0.1:{orthanc['port']}", "--aet", "RADFEDPULL",
                                  "--called-aet", "PACS", "--patient", "MRN002",
                                  "--move-port", str(orthanc["move_port"]), "--retries", "0"])
    assert result.exit_code == 3, result.output
    assert f"expected 25, received {25 - BROKEN}, failed {BROKEN}" in result.output
    assert f"series {study['ct']} (CT): {BROKEN} of 8 missing after 1 attempt(s)" in result.output
    assert "PACS final C-MOVE status 0x" in result.output
    engine.dispose()


def test_pull_errors_are_clear(sqlite_cdm, tmp_path, orthanc):
    with pytest.raises(PullError, match="refused or did not answer"):
        pull(sqlite_cdm, tmp_path, f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "WRONGAET", mode="get")
    with pytest.raises(PullError, match="HOST:PORT"):
        pull(sqlite_cdm, tmp_path, "nohostport", "RADFEDPULL", "PACS")
    db = tmp_path / "cdm.sqlite"
    runner = CliRunner()
    assert runner.invoke(main, ["--db", str(db), "init"]).exit_code == 0
    (tmp_path / "node.toml").write_text('[site]\ndata_dir = "store"\n')
    result = runner.invoke(main, ["--config", str(tmp_path / "node.toml"), "--db", str(db),
                                  "dicom", "pull", "--pacs", f"127.0.0.1:{free_port()}",
                                  "--aet", "RADFEDPULL", "--called-aet", "PACS", "--mode", "get"])
    assert result.exit_code == 1 and "error: PACS" in result.output and "Traceback" not in result.output
