"""PACS pull against a real Orthanc: C-FIND then C-MOVE (to our listener) or C-GET."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cdm.schema import tables
from coordinator.natsproc import free_port, free_ports
from node.cli import main
from node.dicom.pull import PullError, pull
from test_dicom_fixtures import add_person, make_study

IO = tables["image_occurrence"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc on free loopback ports (HTTP off), holding two patients' studies; knows RADFEDPULL."""
    home = tmp_path_factory.mktemp("orthanc")
    dicom_port, move_port, http_port = free_ports(3)
    config = {
        "Name": "radfed-test-pacs", "StorageDirectory": str(home / "db"), "IndexDirectory": str(home / "db"),
        "DicomServerEnabled": True, "DicomAet": "PACS", "DicomPort": dicom_port,
        "HttpServerEnabled": False, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
        "DicomModalities": {"radfed": ["RADFEDPULL", "127.0.0.1", move_port]},
        "DicomAlwaysAllowStore": True, "Plugins": [], "ConcurrentJobs": 1,
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
        studies = {pid: make_study(home / pid, patient_id=pid, seed=i) for i, pid in enumerate(("MRN001", "MRN002"))}
        for pid in studies:
            sent = subprocess.run(["storescu", "-R", "+sd", "+r", "-aec", "PACS", "127.0.0.1", str(dicom_port),
                                   str(home / pid)], capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
        yield {"port": dicom_port, "move_port": move_port, "studies": studies}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pull_by_patient_with_c_move(any_cdm, tmp_path, orthanc):
    for pid in ("MRN001", "MRN002"):
        add_person(any_cdm, pid)
    report = pull(any_cdm, tmp_path / "data", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  patient="MRN001", mode="move", move_port=orthanc["move_port"])
    assert report.studies == [orthanc["studies"]["MRN001"]["study"]]
    assert report.completed == 25 and report.failed == 0
    with any_cdm.connect() as conn:
        rows = {r["image_series_uid"]: r for r in conn.execute(select(IO)).mappings()}
    study = orthanc["studies"]["MRN001"]
    assert {study["ct"], study["adc"], study["pet"]} <= set(rows) and len(rows) == 4
    assert rows[study["ct"]]["image_source"] == "pull" and rows[study["ct"]]["instance_count"] == 8
    assert len(list((tmp_path / "data" / "dicom").rglob("*.dcm"))) == 25


def test_pull_since_with_c_get(sqlite_cdm, tmp_path, orthanc):
    for pid in ("MRN001", "MRN002"):
        add_person(sqlite_cdm, pid)
    later = pull(sqlite_cdm, tmp_path / "d1", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                 since=dt.date(2026, 3, 2), mode="get")
    assert later.studies == [] and later.completed == 0
    report = pull(sqlite_cdm, tmp_path / "d2", f"127.0.0.1:{orthanc['port']}", "RADFEDPULL", "PACS",
                  since=dt.date(2026, 3, 1), mode="get")
    assert len(report.studies) == 2 and report.completed == 50 and report.failed == 0
    assert report.index.indexed == 50


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
    assert result.exit_code == 2 and "error: PACS" in result.output and "Traceback" not in result.output
