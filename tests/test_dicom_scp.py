"""The Storage SCP against real peers: dcmtk storescu/echoscu, a pynetdicom SCU that aborts, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from sqlalchemy import func, select

from cdm.ids import stable_id
from cdm.schema import tables
from coordinator.natsproc import free_port
from node.dicom.network import NODELAY_HANDLERS, nodelay_is_set
from node.dicom.scp import StorageSCP
from node.quarantine import quarantine_counts
from test_dicom_fixtures import add_person, make_study

IO = tables["image_occurrence"]
REPO = Path(__file__).resolve().parent.parent
AET = "RADFEDTEST"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def storage_scp(engine, tmp_path, *indexed_handlers):
    """A StorageSCP called ``AET`` on a free port, storing under ``tmp_path / "data"`` and telling each of
    ``indexed_handlers`` of what it indexes; yields (scp, port) and stops it on the way out."""
    scp = StorageSCP(engine, tmp_path / "data", AET, port=0)
    scp.store.indexed_handlers.extend(indexed_handlers)
    port = scp.start()
    try:
        yield scp, port
    finally:
        scp.stop()


def dcmtk(tool: str, port: int, *paths, options=(), timeout: float = 60) -> None:
    """dcmtk's ``echoscu`` / ``storescu`` against the SCP on ``port`` (sending ``paths``); it must succeed."""
    done = subprocess.run([tool, *options, "-aec", AET, "127.0.0.1", str(port), *map(str, paths)],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr


def associate(port: int):
    """A pynetdicom association from a CT modality to the SCP on ``port``, TCP_NODELAY on both ends."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    return ae.associate("127.0.0.1", port, ae_title=AET, evt_handlers=NODELAY_HANDLERS)


def _series(engine):
    with engine.connect() as conn:
        return {r["image_series_uid"]: r for r in conn.execute(select(IO)).mappings()}


def test_storescu_sends_a_study_incl_seg(any_cdm, tmp_path):
    study = make_study(tmp_path / "src")
    add_person(any_cdm, study["patient_id"])
    with storage_scp(any_cdm, tmp_path) as (scp, port):
        dcmtk("echoscu", port, timeout=30)
        dcmtk("storescu", port, tmp_path / "src", options=("-R", "+sd", "+r"))
    assert scp.store.stored == 25
    rows = _series(any_cdm)
    assert rows[study["ct"]]["instance_count"] == 8 and rows[study["ct"]]["image_source"] == "scp"
    seg = next(r for r in rows.values() if r["modality_source_value"] == "SEG")
    assert seg["referenced_series_uid"] == study["ct"]
    stored = list((tmp_path / "data" / "dicom" / "MRN001").rglob("*.dcm"))
    assert len(stored) == 25
    original = pydicom.dcmread(study["ct_files"][0])
    copy = pydicom.dcmread(next(p for p in stored if p.stem == original.SOPInstanceUID))
    assert copy.PixelData == original.PixelData


def test_abort_mid_transfer_keeps_what_was_stored(sqlite_cdm, tmp_path):
    study = make_study(tmp_path / "src")
    add_person(sqlite_cdm, study["patient_id"])
    with storage_scp(sqlite_cdm, tmp_path) as (scp, port):
        assoc = associate(port)
        assert assoc.is_established
        assert nodelay_is_set(assoc)  # requestor side
        assert all(nodelay_is_set(a) for a in scp.server.active_associations)  # acceptor side
        for path in study["ct_files"][:3]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        assoc.abort()
        deadline = time.time() + 10
        while scp.store.report.indexed < 3 and time.time() < deadline:
            time.sleep(0.05)
    assert scp.store.stored == 3
    assert _series(sqlite_cdm)[study["ct"]]["instance_count"] == 3
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 3
    assert not list((tmp_path / "data").rglob("*.part"))


def test_unknown_patient_via_scp_is_kept_on_disk_and_quarantined(sqlite_cdm, tmp_path):
    with storage_scp(sqlite_cdm, tmp_path) as (_, port):
        dcmtk("storescu", port, get_testdata_file("CT_small.dcm"), timeout=30)
    with sqlite_cdm.connect() as conn:
        assert quarantine_counts(conn, "dicom") == {"UNKNOWN_PATIENT": 1}
        assert conn.execute(select(func.count()).select_from(IO)).scalar_one() == 0
    kept = list((tmp_path / "data" / "dicom").rglob("*.dcm"))
    assert len(kept) == 1
    # After the FHIR load, re-indexing the data dir picks it up.
    add_person(sqlite_cdm, "1CT1")
    from node.dicom.index import index_paths

    assert index_paths(sqlite_cdm, [tmp_path / "data" / "dicom"]).indexed == 1


def test_cli_listen_receives_and_stops_cleanly(tmp_path):
    db = tmp_path / "cdm.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [str(Path(sys.executable).parent / "radfed-node"), "--db", str(db)]
    (tmp_path / "node.toml").write_text('[site]\nname = "t"\ndata_dir = "store"\n')
    subprocess.run([*cli, "init"], check=True, capture_output=True, cwd=tmp_path, env=env)
    from cdm.db import open_engine

    engine = open_engine(db)
    add_person(engine, "1CT1")
    port = free_port()
    proc = subprocess.Popen([*cli, "dicom", "listen", "--port", str(port), "--ae-title", "NODE"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            echo = subprocess.run(["echoscu", "-aec", "NODE", "127.0.0.1", str(port)], capture_output=True)
            if echo.returncode == 0:
                break
            time.sleep(0.2)
        assert echo.returncode == 0
        sent = subprocess.run(["storescu", "-aec", "NODE", "127.0.0.1", str(port),
                               get_testdata_file("CT_small.dcm")], capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert "received 1 instances" in err and "Traceback" not in err and proc.returncode == 0
    assert len(list((tmp_path / "store" / "dicom").rglob("*.dcm"))) == 1
    with engine.connect() as conn:
        uid = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SeriesInstanceUID
        assert conn.execute(select(IO.c.image_occurrence_id)).scalar_one() == stable_id("dicom-series", uid)
    engine.dispose()


def test_instance_without_patient_id_is_stored_and_quarantined(sqlite_cdm, tmp_path):
    with storage_scp(sqlite_cdm, tmp_path) as (_, port):
        assoc = associate(port)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        del ds.PatientID
        assert assoc.send_c_store(ds).Status == 0x0000  # kept: the site fixes the header, not the sender
        assoc.release()
    with sqlite_cdm.connect() as conn:
        assert quarantine_counts(conn, "dicom") == {"MISSING_ATTRIBUTE": 1}
        reason = conn.execute(select(tables["quarantine"].c.reason)).scalar_one()
    assert "PatientID" in reason
    assert len(list((tmp_path / "data" / "dicom" / "_unknown").rglob("*.dcm"))) == 1


def test_features_follow_segmentations_as_they_arrive(sqlite_cdm, tmp_path):
    from node.dicom.features import FeatureWorker

    study = make_study(tmp_path / "src")
    add_person(sqlite_cdm, study["patient_id"])
    worker = FeatureWorker(sqlite_cdm)
    try:
        with storage_scp(sqlite_cdm, tmp_path, worker.on_indexed) as (_, port):
            for part in ("ct", "adc", "seg"):  # the SEG last, after its images, as a PACS would route it
                dcmtk("storescu", port, tmp_path / "src" / part, options=("-R", "+sd"))
            deadline = time.time() + 30
            while worker.report.segmentations == 0 and time.time() < deadline:
                time.sleep(0.05)
            worker.join()
    finally:
        worker.stop()
    assert worker.report.segmentations == 1 and not worker.report.quarantined
    with sqlite_cdm.connect() as conn:
        features = dict(conn.execute(select(tables["image_feature"].c.image_feature_source_value,
                                            tables["image_feature"].c.value_as_number)).all())
    assert features["adc_min"] == study["adc_values"].min()
    assert "suv_max" not in features  # the PET series was never sent


def test_storescu_sends_compressed_and_duplicate_instances_into_dicom_listen(tmp_path):
    """dcmtk storescu (each file proposing its own transfer syntax) into ``radfed-node dicom listen``:
    JPEG 2000, JPEG lossless, RLE, JPEG-LS, deflated, big endian, a retired class and a Parametric Map
    are all stored as received and indexed; MR_small in six encodings is one instance; an edited copy
    with the same SOP Instance UID is quarantined beside the tree and the listener exits 3."""
    from test_dicom_fixtures import make_mixed_study, storescu_args

    db = tmp_path / "cdm.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TCP_NODELAY": "1"}
    cli = [str(Path(sys.executable).parent / "radfed-node"), "--db", str(db)]
    (tmp_path / "node.toml").write_text('[site]\nname = "t"\ndata_dir = "store"\n')
    subprocess.run([*cli, "init"], check=True, capture_output=True, cwd=tmp_path, env=env)
    from cdm.db import open_engine

    engine = open_engine(db)
    study = make_mixed_study(tmp_path / "src", "MRN001")
    same = tmp_path / "same"
    same.mkdir()
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        (same / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    edited = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    edited.PatientName = "Someone^Else"
    edited.save_as(tmp_path / "edited.dcm")
    for pid in ("MRN001", "4MR1"):
        add_person(engine, pid)
    port = free_port()
    proc = subprocess.Popen([*cli, "dicom", "listen", "--port", str(port), "--ae-title", "NODE"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    sources = sorted((tmp_path / "src").rglob("*.dcm")) + sorted(same.glob("*.dcm")) + [tmp_path / "edited.dcm"]
    try:
        deadline = time.time() + 30
        while subprocess.run(["echoscu", "-aec", "NODE", "127.0.0.1", str(port)],
                             capture_output=True).returncode and time.time() < deadline:
            time.sleep(0.2)
        for path in sources:  # the file's own transfer syntax is proposed first, as an archive does
            sent = subprocess.run(["storescu", "-aec", "NODE", "127.0.0.1", str(port), *storescu_args(path)],
                                  capture_output=True, text=True, timeout=30, env=env)
            assert sent.returncode == 0, (path.name, sent.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err  # PARTIAL: the edited copy was quarantined
    assert f"received {len(sources)} instances" in err and "Traceback" not in err
    assert f"{study['count'] + 1} indexed" in err and "5 duplicate copies" in err and "DUPLICATE_SOP 1" in err
    stored = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
              for p in (tmp_path / "store" / "dicom").rglob("*.dcm")}
    assert len(stored) == study["count"] + 1
    for source in sorted((tmp_path / "src").rglob("*.dcm")):
        ours, theirs = pydicom.dcmread(stored[str(pydicom.dcmread(source).SOPInstanceUID)]), pydicom.dcmread(source)
        assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID, source.name
    kept = pydicom.dcmread(stored[str(edited.SOPInstanceUID)])
    assert kept.PatientName == "Subject^Test" or kept.PatientName != "Someone^Else"  # the first copy stays
    assert [p.name for p in (tmp_path / "store" / "dicom-duplicates").iterdir()][0].startswith(str(edited.SOPInstanceUID))
    with engine.connect() as conn:
        assert quarantine_counts(conn, "dicom") == {"DUPLICATE_SOP": 1}
    engine.dispose()
