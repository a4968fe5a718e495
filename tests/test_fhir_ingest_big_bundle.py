"""Big FHIR Bundle files read as a stream (node/ingest/reader.py ``read_big_bundle``, engine.py
``_stream_bundle``): the CDM rows, quarantine and summary are those of the whole-file path, with and
without worker processes; file-level errors keep their verdict; the spool folder goes; memory does
not grow with the file.

The threshold (``reader.STREAM_BYTES``) is lowered to 0 so that test-sized Bundles are streamed.
Real SQLite CDMs, real worker processes, real files: the real Synthea resources of ../shared/fhir
put into Synthea-style Bundles, and generated ones.
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from cdm.db import create_cdm, drop_cdm
from cdm.schema import tables
from node.ingest import reader
from node.ingest.engine import ingest_paths
from node.ingest.reader import InputFile, bundle_rank, read_big_bundle, read_whole_bundle
from tests.test_fhir_ingest_runs import condition, dump, export_with_duplicates, outcome, patient, write_bundle

SYNTHEA = "fhir/synthea-bulk-10"


def _resources(folder: Path) -> list[dict]:
    """Every resource of the NDJSON files of ``folder`` (lines that are not one are left out)."""
    found = []
    for path in sorted(folder.glob("[A-Z]*.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str) and resource.get("id"):
                found.append(resource)
    return found


def _as_uuid_references(node, inside: set[str]):
    """``node`` with each ``Type/id`` reference to a resource in the same Bundle as ``urn:uuid:id``."""
    if isinstance(node, dict):
        return {k: (f"urn:uuid:{v.split('/', 1)[1]}" if k == "reference" and isinstance(v, str) and v in inside
                    else _as_uuid_references(v, inside)) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_uuid_references(v, inside) for v in node]
    return node


def _entries(resources: list[dict], drop_ids: bool) -> list[dict]:
    """Transaction entries as Synthea writes them: fullUrl ``urn:uuid:<id>``, references to the
    Bundle's resources by that fullUrl; ``drop_ids``: every other resource without its id (a POST)."""
    inside = {f"{r['resourceType']}/{r['id']}" for r in resources}
    entries = []
    for n, resource in enumerate(resources):
        body = _as_uuid_references(resource, inside)
        if drop_ids and n % 2:
            body = {k: v for k, v in body.items() if k != "id"}
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": body,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    return entries


def synthea_bundles(source: Path, folder: Path) -> Path:
    """The real Synthea export as Synthea's Bundles: ``hospitalInformation`` (Organizations,
    Locations), ``practitionerInformation`` (Practitioners, PractitionerRoles) and one transaction
    Bundle per patient (the Patient and every resource naming it, by urn:uuid)."""
    resources = _resources(source)
    folder.mkdir(parents=True)
    shared = {"hospitalInformation": ("Organization", "Location"),
              "practitionerInformation": ("Practitioner", "PractitionerRole")}
    for name, types in shared.items():
        chosen = [r for r in resources if r["resourceType"] in types]
        (folder / f"{name}1.json").write_bytes(orjson.dumps(
            {"resourceType": "Bundle", "type": "batch", "entry": _entries(chosen, drop_ids=False)}))
    for person in (r for r in resources if r["resourceType"] == "Patient"):
        mine = [person] + [r for r in resources
                           if (r.get("subject") or r.get("patient") or {}).get("reference") == f"Patient/{person['id']}"]
        (folder / f"patient-{person['id']}.json").write_bytes(orjson.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": _entries(mine, drop_ids=True)}))
    return folder


def awkward_bundle(source: Path, path: Path) -> Path:
    """One Bundle of a synthetic export (its planted bad records and duplicates included): entries
    shuffled out of dependency order, so references point forward by urn:uuid; an entry without a
    resource and one that is not an object; ``type`` after ``entry``."""
    resources = _resources(source)
    entries = _entries(resources, drop_ids=True)
    random.Random(23).shuffle(entries)
    entries.insert(5, {"fullUrl": "urn:uuid:nothing-here", "request": {"method": "DELETE"}})
    entries.insert(len(entries) // 2, "not an entry")
    path.write_bytes(b'{"resourceType":"Bundle","entry":' + orjson.dumps(entries) + b',"type":"transaction"}')
    return path


def _load(engine, paths, workers: int, streamed: bool, monkeypatch, spool: Path):
    """Load ``paths`` into a fresh CDM: what the run says, every row, and the re-run."""
    drop_cdm(engine)
    create_cdm(engine, source_name="test-site")
    monkeypatch.setattr(reader, "STREAM_BYTES", 0 if streamed else 16 << 20)
    monkeypatch.setattr(reader, "SPOOL_DIR", str(spool))
    first = ingest_paths(engine, paths, batch_size=37, workers=workers, unit_bytes=4096)
    again = ingest_paths(engine, paths, batch_size=37, workers=workers, unit_bytes=4096)
    assert list(spool.iterdir()) == [], "the spool folder is removed"
    return outcome(first), dump(engine), outcome(again)


@pytest.mark.parametrize("kind", ["synthea", "awkward"])
def test_a_streamed_bundle_loads_exactly_what_the_whole_file_path_loads(kind, sqlite_cdm, shared_dir, tmp_path,
                                                                       monkeypatch):
    if kind == "synthea":
        paths = [synthea_bundles(shared_dir / SYNTHEA, tmp_path / "bundles")]
    else:
        export, _first = export_with_duplicates(tmp_path)
        paths = [awkward_bundle(export, tmp_path / "one.json")]
    spool = tmp_path / "spool"
    spool.mkdir()
    results = {(streamed, workers): _load(sqlite_cdm, paths, workers, streamed, monkeypatch, spool)
               for streamed in (False, True) for workers in (0, 1)}
    reference = results[(False, 0)]
    for key, result in results.items():
        assert result[0] == reference[0], f"{key}: the same summary"
        assert result[1] == reference[1], f"{key}: the same rows, ids and quarantine"
        assert result[2] == reference[2], f"{key}: the same re-run"
    summary, rows, _again = reference
    assert summary["by_type"]["Patient"]["loaded"] >= 13 and len(rows["person"]) >= 13
    if kind == "awkward":
        quarantined = {(r.reason_code, r.source_line) for r in rows["quarantine"] if r.reason_code == "NOT_A_RESOURCE"}
        assert len(quarantined) == 2 and summary["quarantined_by_reason"]["INVALID_RESOURCE"] >= 1
    # the Encounters' subjects named the Patient by urn:uuid (forward, in the awkward Bundle): resolved
    assert all(r.person_id is not None for r in rows["visit_occurrence"])


def test_a_streamed_bundle_with_two_workers_into_postgresql_loads_what_the_whole_file_path_loads(
        pg_cdm, tmp_path, monkeypatch):
    """The streamed path on PostgreSQL (COPY, the index-probed hash look-up) with two workers taking
    its entry blocks at once: the same summary, rows and re-run as the whole file read in process."""
    export, _first = export_with_duplicates(tmp_path)
    paths = [awkward_bundle(export, tmp_path / "one.json")]
    spool = tmp_path / "spool"
    spool.mkdir()
    whole = _load(pg_cdm, paths, 0, False, monkeypatch, spool)
    streamed = _load(pg_cdm, paths, 2, True, monkeypatch, spool)
    assert streamed[0] == whole[0], "the same summary"
    assert streamed[1] == whole[1], "the same rows, ids and quarantine"
    assert streamed[2] == whole[2], "the same re-run"
    assert whole[0]["by_type"]["Patient"]["loaded"] >= 13 and whole[2]["by_type"]["Patient"]["unchanged"] >= 13
    assert all(r.person_id is not None for r in whole[1]["visit_occurrence"])


def test_small_bundles_are_still_read_whole(sqlite_cdm, shared_dir, tmp_path, monkeypatch):
    folder = synthea_bundles(shared_dir / SYNTHEA, tmp_path / "bundles")
    calls = []
    monkeypatch.setattr(reader, "read_big_bundle", lambda *a: calls.append(a) or iter(()))
    summary = ingest_paths(sqlite_cdm, [folder], workers=0)
    assert calls == [] and summary.total("loaded") > 1000


def _quarantine(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted((Path(r.source_file).name, r.source_line, r.reason_code, r.reason)
                      for r in conn.execute(select(tables["quarantine"])))


@pytest.mark.parametrize("workers", [0, 1])
def test_file_level_errors_keep_their_verdict_and_load_nothing_of_the_file(workers, sqlite_cdm, tmp_path,
                                                                          monkeypatch):
    folder = tmp_path / "in"
    write_bundle(folder / "good.json", [patient("g1"), condition("gc1", "g1")], "transaction")
    whole = write_bundle(folder / "cut.json", [patient(f"t{i}") for i in range(200)], "transaction").read_bytes()
    (folder / "cut.json").write_bytes(whole[: len(whole) * 2 // 3])  # broken midway, after many entries
    (folder / "history.json").write_bytes(b'{"resourceType":"Bundle","entry":'
                                          + orjson.dumps([{"resource": patient("h1")}]) + b',"type":"history"}')
    spool = tmp_path / "spool"
    spool.mkdir()
    verdicts = {}
    for streamed in (False, True):
        drop_cdm(sqlite_cdm)
        create_cdm(sqlite_cdm, source_name="test-site")
        monkeypatch.setattr(reader, "STREAM_BYTES", 0 if streamed else 16 << 20)
        monkeypatch.setattr(reader, "SPOOL_DIR", str(spool))
        summary = ingest_paths(sqlite_cdm, [folder], workers=workers, unit_bytes=4096)
        assert list(spool.iterdir()) == []
        rows = dump(sqlite_cdm)
        assert summary.total("loaded") == 2 and len(rows["person"]) == 1, "only good.json is loaded"
        verdicts[streamed] = (summary.quarantined, [q[:3] for q in _quarantine(sqlite_cdm)])
        reasons = {q[0]: q[3] for q in _quarantine(sqlite_cdm)}
        if streamed:
            assert "too big to copy" in reasons["cut.json"] and str((folder / "cut.json").resolve()) in reasons["cut.json"]
    assert verdicts[True] == verdicts[False] == (
        {"NOT_JSON": 1, "UNSUPPORTED_BUNDLE": 1}, [("cut.json", 0, "NOT_JSON"), ("history.json", 0, "UNSUPPORTED_BUNDLE")])


def test_a_streamed_file_level_error_quarantines_a_bounded_head_of_the_file(tmp_path):
    path = tmp_path / "cut.json"
    whole = orjson.dumps({"resourceType": "Bundle", "type": "batch",
                          "entry": [{"resource": patient(f"p{i}")} for i in range(2000)]})
    path.write_bytes(whole[:-100])
    (item,) = list(read_big_bundle(InputFile(path, "bundle")))
    assert item.error[0] == "NOT_JSON" and item.line == 0
    assert item.raw == whole[: reader.PAYLOAD_HEAD] and len(whole) > 10 * reader.PAYLOAD_HEAD


def test_the_spool_folder_goes_when_the_reader_is_left_midway(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(reader, "SPOOL_DIR", str(spool))
    path = write_bundle(tmp_path / "b.json", [patient(f"p{i}") for i in range(50)])
    items = read_big_bundle(InputFile(path, "bundle"))
    next(items)
    assert len(list(spool.iterdir())) == 1, "entries wait in the spool while the Bundle is read"
    items.close()
    assert list(spool.iterdir()) == []


def test_bundle_rank_finds_a_type_cut_at_a_chunk_border(tmp_path, monkeypatch):
    path = tmp_path / "b.json"
    path.write_bytes(b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType" :  "Observation"}},'
                     b' {"resourceType": 5}, {"resource": {"resourceType":"Patient"}}]}')
    expected = reader.rank("Patient")
    for size in range(1, 60):
        monkeypatch.setattr(reader, "SCAN_BYTES", size)
        assert bundle_rank(path) == expected, f"chunks of {size} bytes"


def _big_bundle(path: Path, megabytes: int) -> Path:
    """A generated transaction Bundle of about ``megabytes`` MB: Patients and their Observations (~1 KB
    each, as Synthea's), referenced by urn:uuid (written entry by entry: the test's own memory stays
    small)."""
    with open(path, "wb") as out:
        out.write(b'{"resourceType":"Bundle","type":"transaction","entry":[')
        n = 0
        while out.tell() < megabytes << 20:
            pid = f"00000000-0000-4000-8000-{n:012d}"
            entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": patient(pid)}]
            for k in range(20):
                oid = f"00000000-0000-4000-9000-{n * 100 + k:012d}"
                entries.append({"fullUrl": f"urn:uuid:{oid}", "request": {"method": "POST", "url": "Observation"},
                                "resource": {
                    "resourceType": "Observation", "status": "final",
                    "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-heart-rate"]},
                    "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": oid}],
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "vital-signs", "display": "Vital signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                             "text": "Heart rate"},
                    "subject": {"reference": f"urn:uuid:{pid}", "display": f"Mrs. Patient{n} Example{n}"},
                    "performer": [{"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974493",
                                   "display": "Dr. Chelsey293 Simonis280"}],
                    "valueQuantity": {"value": 60 + k * 0.5, "unit": "/min", "system": "http://unitsofmeasure.org",
                                      "code": "/min"},
                    "effectiveDateTime": "2020-01-02T03:04:05-04:00", "issued": "2020-01-02T03:04:05.123-04:00"}})
            out.write((b"," if n else b"") + b",".join(orjson.dumps(e) for e in entries))
            n += 1
        out.write(b"]}")
    return path


def _peak(read, path: Path) -> tuple[int, int]:
    """(items, peak traced bytes) of reading ``path`` with ``read``, each item dropped once seen."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in read(InputFile(path, "bundle")))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_streamed_bundle_holds_far_less_than_the_file(tmp_path):
    path = _big_bundle(tmp_path / "big.json", 40)
    size = path.stat().st_size
    bound = size // 4  # the fullUrl map (~150 bytes an entry), one entry, the spool buffers
    streamed, peak = _peak(read_big_bundle, path)
    assert streamed > 40_000 and peak < bound, f"streamed: {peak:,} bytes traced at the peak for a {size:,}-byte file"
    whole, whole_peak = _peak(read_whole_bundle, path)
    assert whole == streamed and whole_peak > 2 * size, "the whole-file reader breaks the bound"
