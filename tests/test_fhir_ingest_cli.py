"""``radfed-node ingest fhir`` and ``radfed-node mapping-report`` as a site administrator runs them,
and a load of the synthetic generator's own export (only its planted bad records are quarantined)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from click.testing import CliRunner
from sqlalchemy import select

from cdm.db import open_engine
from cdm.schema import tables
from node.cli import main
from node.ingest.engine import ingest_paths
from node.synth import SynthOptions, generate

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1960",
           "identifier": [{"system": "urn:site:mrn", "value": "MRN-77"}]}


def _condition(cid: str, code: str, patient: str = "p1") -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "urn:site:dx", "code": code, "display": f"local {code}"}]},
            "onsetDateTime": "2022-02-02"}


def _export(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Patient.000.ndjson").write_bytes(orjson.dumps(PATIENT) + b"\n")
    conditions = [_condition(f"c{i}", "DX-A" if i < 3 else "DX-B") for i in range(4)] + [_condition("c9", "DX-A", "ghost")]
    (folder / "Condition.000.ndjson").write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in conditions))
    (folder / "log.ndjson").write_bytes(b'{"eventId": "kickoff"}\n')
    return folder


def test_ingest_fhir_cli_summary_json_and_exit_codes(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "cdm.sqlite")
    folder = _export(tmp_path / "export")
    result = runner.invoke(main, ["--db", db, "ingest", "fhir", str(folder)])
    assert result.exit_code == 2 and "run `radfed-node init` first" in result.output
    assert runner.invoke(main, ["--db", db, "init"]).exit_code == 0

    (tmp_path / "node.toml").write_text('[fhir]\nmrn_system = "urn:site:mrn"\n')
    config = ["--config", str(tmp_path / "node.toml"), "--db", db]
    result = runner.invoke(main, [*config, "ingest", "fhir", "--no-progress", str(folder)])
    assert result.exit_code == 3, result.output  # finished, but one resource was quarantined (cdm/errors.py)
    assert result.output.startswith("3 files: 6 resources, 5 loaded, 0 updated, 0 unchanged, "
                                    "1 quarantined (UNKNOWN_PATIENT 1), 0 skipped")
    person = tables["person"]
    engine = open_engine(db)
    with engine.connect() as conn:
        assert conn.execute(select(person.c.person_source_value)).scalar_one() == "MRN-77"

    result = runner.invoke(main, [*config, "ingest", "fhir", "--json", str(folder)])
    assert result.exit_code == 3, result.output  # the ghost's Condition is still quarantined
    summary = json.loads(result.output)
    assert summary["unchanged"] == 5 and summary["quarantined"] == 1 and summary["export_metadata_files"] == 1
    assert summary["by_type"]["Condition"] == {"loaded": 0, "updated": 0, "unchanged": 4, "quarantined": 1,
                                               "skipped": 0, "unmapped_codes": 0}  # nothing re-mapped

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "Patient.000.ndjson").write_bytes(orjson.dumps({**PATIENT, "id": "p2"}) + b"\n")
    result = runner.invoke(main, [*config, "ingest", "fhir", str(clean)])
    assert result.exit_code == 0, result.output  # everything loaded
    whole_file_bad = tmp_path / "bad"
    whole_file_bad.mkdir()
    (whole_file_bad / "Condition.000.ndjson").write_bytes(b"not json\n{}\n")
    result = runner.invoke(main, [*config, "ingest", "fhir", str(whole_file_bad)])
    assert result.exit_code == 3 and "2 quarantined" in result.output, result.output

    result = runner.invoke(main, ["--db", db, "ingest", "fhir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(main, ["--db", db, "ingest", "fhir", "--batch-size", "0", str(folder)])
    assert result.exit_code == 2
    engine.dispose()


def test_mapping_report_lists_unmapped_codes_by_frequency(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "cdm.sqlite")
    assert runner.invoke(main, ["--db", db, "init"]).exit_code == 0
    result = runner.invoke(main, ["--db", db, "mapping-report"])
    assert result.exit_code == 0 and "every source code maps" in result.output
    assert runner.invoke(main, ["--db", db, "ingest", "fhir", str(_export(tmp_path / "export"))]).exit_code == 3
    result = runner.invoke(main, ["--db", db, "mapping-report", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # a local code system is shown by its URI (how a spec names it), never by an internal vocabulary name
    assert [(r["code"], r["rows"], r["table"], r["role"], r["name"]) for r in report] == [
        ("urn:site:dx|DX-A", 3, "condition_occurrence", "concept", "local DX-A"),
        ("urn:site:dx|DX-B", 1, "condition_occurrence", "concept", "local DX-B")]
    result = runner.invoke(main, ["--db", db, "mapping-report", "--limit", "1"])
    assert "2 unmapped source codes, 4 codings (concept 4); the 1 most frequent" in result.output
    assert "DX-A" in result.output and "DX-B" not in result.output


def test_generator_export_loads_with_only_its_planted_bad_records_quarantined(sqlite_cdm, tmp_path):
    truth = generate(tmp_path / "synth", SynthOptions(sites=1, patients=20, seed=3, dicom=False))
    fhir = tmp_path / "synth" / "site-1" / "fhir"
    summary = ingest_paths(sqlite_cdm, [fhir])
    q = tables["quarantine"]
    with sqlite_cdm.connect() as conn:
        quarantined = {(Path(r.source_file).name, r.source_line, r.resource_id) for r in conn.execute(select(q))}
    planted = {(Path(b["file"]).name, b["line"], b["resource_id"]) for b in truth["bad_records"]}
    # the truncated line cannot name its id: match it by file and line
    assert {(f, n) for f, n, _ in quarantined} == {(f, n) for f, n, _ in planted}
    assert {i for *_, i in quarantined} <= {i for *_, i in planted} | {None}
    manifest = json.loads((fhir / "manifest.json").read_text())
    assert summary.total() == sum(f["count"] for f in manifest["output"])
    persons = tables["person"]
    with sqlite_cdm.connect() as conn:
        assert conn.execute(select(persons.c.person_id)).all().__len__() == truth["sites"][0]["patients"]
    # every synthetic tumour (ICD-O-3 coded Condition) has its disease episode
    tumours = sum(1 for line in (fhir / "Condition.000.ndjson").read_bytes().splitlines()
                  if b"icd-o-3" in line and line.strip().endswith(b"}") and b"no-such" not in line)
    episode = tables["episode"]
    with sqlite_cdm.connect() as conn:
        episodes = conn.execute(select(episode.c.episode_id).where(episode.c.episode_concept_id == 32533)).all()
    assert len(episodes) == tumours - 1  # the planted orphan Condition is ICD-O-3 coded too
