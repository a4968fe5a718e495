"""``radfed-node ingest dicom`` and ``radfed-node features`` as a site administrator runs them."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import func, select

from cdm.db import open_engine
from cdm.schema import tables
from node.cli import main
from test_dicom_fixtures import add_person, make_study


def test_ingest_then_features(tmp_path):
    db = tmp_path / "cdm.sqlite"
    runner = CliRunner()
    assert runner.invoke(main, ["--db", str(db), "init"]).exit_code == 0
    study = make_study(tmp_path / "in")
    (tmp_path / "in" / "README.txt").write_text("export notes")
    engine = open_engine(db)
    add_person(engine, study["patient_id"])
    result = runner.invoke(main, ["--db", str(db), "ingest", "dicom", str(tmp_path / "in")])
    assert result.exit_code == 3, result.output  # PARTIAL: the README was quarantined
    assert "26 files: 25 indexed into 4 series, 1 quarantined (NOT_DICOM 1)" in result.output
    result = runner.invoke(main, ["--db", str(db), "features", "--series", study["ct"]])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 segmentations:")
    with engine.connect() as conn:
        written = conn.execute(select(func.count()).select_from(tables["image_feature"])).scalar_one()
    assert f"{written} features written" in result.output and written > 20
    engine.dispose()


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    db = tmp_path / "empty.sqlite"
    (tmp_path / "f.dcm").write_bytes(b"x")
    result = runner.invoke(main, ["--db", str(db), "ingest", "dicom", str(tmp_path / "f.dcm")])
    assert result.exit_code == 2 and "run `radfed-node init` first" in result.output
    assert runner.invoke(main, ["--db", str(db), "init"]).exit_code == 0
    result = runner.invoke(main, ["--db", str(db), "features"])
    assert result.exit_code == 2 and "exactly one of --series UID or --all" in result.output
    result = runner.invoke(main, ["--db", str(db), "features", "--series", "1.2.3"])
    assert result.exit_code == 2 and "no indexed segmentation" in result.output
    result = runner.invoke(main, ["--db", str(db), "features", "--all"])
    assert result.exit_code == 0 and "0 segmentations" in result.output


def test_listen_on_a_taken_port_is_one_line(tmp_path):
    import socket

    runner = CliRunner()
    db = tmp_path / "cdm.sqlite"
    assert runner.invoke(main, ["--db", str(db), "init"]).exit_code == 0
    (tmp_path / "node.toml").write_text('[site]\ndata_dir = "store"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(main, ["--config", str(tmp_path / "node.toml"), "--db", str(db),
                                      "dicom", "listen", "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "store").exists()
