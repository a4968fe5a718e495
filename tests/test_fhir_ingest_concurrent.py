"""Two ``radfed-node ingest fhir`` processes loading disjoint halves of one export into one PostgreSQL
CDM at the same time write exactly what one process writes for the whole export (issue 23).

Each export is split line by line (every other line of every NDJSON file to each half), so a
patient's encounters, conditions and medications are mostly in the *other* half than the Patient,
and practitioners, organisations and locations referenced from one half are in the other: the
cross-process cases (a resource waiting for its patient, a reference waiting for its target, local
concepts both halves create, observation periods over rows of both) all occur.  The one-process load
reads both halves too (same file names, so quarantine rows match by file and line).

Every table is compared row for row except the wall-clock columns: ids are derived from source
identifiers (cdm/ids.py), never allocated, so equal ids are part of "the same rows".  Each test uses
fresh, uniquely named PostgreSQL databases (the real server) and drops them.  Both processes are
held at the start by the loaders' advisory lock (node/ingest/concurrency.py) and released together,
and the test checks from ``source_record.loaded_at`` that their batches did interleave.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import func, select

from cdm.db import create_cdm, open_engine
from cdm.locks import hold, lock_key, release
from cdm.schema import tables
from node.ingest.concurrency import LOADING
from tests.conftest import PG_ADMIN_URL
from tests.test_fhir_ingest_runs import dump

BIN = Path(sys.executable).parent
#: Small batches: many short transactions per process, so the two processes' batches interleave.
BATCH = "100"
EXIT_OK, EXIT_PARTIAL = 0, 3


@pytest.fixture
def new_database():
    """Makes fresh PostgreSQL databases holding an empty CDM; drops them after the test."""
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    made: list[str] = []

    def make() -> str:
        name = f"radfed_concurrent_{uuid.uuid4().hex[:12]}"
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        engine = open_engine(url)
        create_cdm(engine, source_name="concurrent-test")
        engine.dispose()
        return url

    yield make
    for name in made:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.close()


def split(source: Path, out: Path) -> tuple[Path, Path]:
    """Every other line of each NDJSON file into halves ``out/a`` and ``out/b`` (same file names);
    other files (export manifests) into ``a`` only."""
    halves = out / "a", out / "b"
    for half in halves:
        half.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.suffix != ".ndjson" or path.name == "log.ndjson":
            (halves[0] / path.name).write_bytes(path.read_bytes())
            continue
        lines = path.read_bytes().splitlines(keepends=True)
        for i, half in enumerate(halves):
            (half / path.name).write_bytes(b"".join(lines[i::2]))
    return halves


def resource_keys(folder: Path) -> set[str]:
    """``source_record`` keys of the resources in a half's NDJSON files (unreadable lines left out)."""
    keys = set()
    for path in folder.glob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                keys.add(f"fhir|{resource.get('resourceType')}|{resource['id']}")
    return keys


def start_ingest(url: str, *folders: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "radfed-node"), "--db", url, "ingest", "fhir", "--json", "--no-progress",
                             "--batch-size", BATCH, *map(str, folders)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def outcome(process: subprocess.Popen) -> tuple[int, dict]:
    out, err = process.communicate(timeout=600)
    assert process.returncode in (EXIT_OK, EXIT_PARTIAL), err.decode()
    return process.returncode, json.loads(out)


def waiting_on_loading_lock(conn: psycopg.Connection) -> int:
    key = lock_key(LOADING)
    return conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND ((classid::bigint << 32) | objid::bigint) = %s", (key,)).fetchone()[0]


def ingest_together(url: str, a: Path, b: Path) -> list[tuple[int, dict]]:
    """Both halves at once: held by the loaders' lock until both processes wait on it, then released."""
    engine = open_engine(url)
    with engine.connect() as gate:
        gate = gate.execution_options(isolation_level="AUTOCOMMIT")
        hold(gate, LOADING)
        processes = [start_ingest(url, a), start_ingest(url, b)]
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 120
            while waiting_on_loading_lock(watcher) < 2:
                assert time.monotonic() < deadline, "the ingest processes never reached the loaders' lock"
                assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
                time.sleep(0.05)
        release(gate, LOADING)
    engine.dispose()
    return [outcome(p) for p in processes]


def rows(engine) -> dict[str, list]:
    """Every row of every table (tests/test_fhir_ingest_runs.py's ``dump``) without the time a
    reference was first found waiting, which differs between two loads as the load times do."""
    out = dump(engine)
    when = [c.name for c in tables["pending_reference"].columns].index("recorded_at")
    out["pending_reference"] = [r[:when] + r[when + 1:] for r in out["pending_reference"]]
    return out


def differences(expected: dict[str, list], got: dict[str, list]) -> dict[str, dict]:
    """Per table, rows only one side has (as multisets: a duplicated row counts)."""
    out = {}
    for name in sorted(set(expected) | set(got)):
        want, have = Counter(expected.get(name, [])), Counter(got.get(name, []))
        if want != have:
            out[name] = {"missing": list((want - have).elements())[:3], "extra": list((have - want).elements())[:3],
                         "counts": (sum(want.values()), sum(have.values()))}
    return out


def loaded_at_span(engine, keys: set[str]) -> tuple:
    record = tables["source_record"]
    with engine.connect() as conn:
        times = [t for k, t in conn.execute(select(record.c.source_key, record.c.loaded_at)) if k in keys]
    return min(times), max(times)


def quarantined_files(engine) -> set[str]:
    q = tables["quarantine"]
    with engine.connect() as conn:
        return set(conn.execute(select(q.c.source_file).distinct()).scalars())


def source_records(engine) -> list[tuple]:
    record = tables["source_record"]
    with engine.connect() as conn:
        return sorted(conn.execute(select(record)).all())


def synthetic_export(tmp_path: Path) -> Path:
    subprocess.run([str(BIN / "radfed-node"), "synth", "--sites", "1", "--patients", "150", "--seed", "23",
                    "--no-dicom", str(tmp_path / "synth")], check=True, capture_output=True)
    return tmp_path / "synth" / "site-1" / "fhir"


@pytest.mark.parametrize("export", ["synthea", "synthetic"])
def test_two_concurrent_ingests_write_the_rows_one_ingest_writes(export, shared_dir, tmp_path, new_database):
    source = shared_dir / "fhir" / "synthea-bulk-10" if export == "synthea" else synthetic_export(tmp_path)
    a, b = split(source, tmp_path / "halves")

    one_url, two_url = new_database(), new_database()
    one_code, one = outcome(start_ingest(one_url, a, b))
    (a_code, a_summary), (b_code, b_summary) = ingest_together(two_url, a, b)
    one_engine, two_engine = open_engine(one_url), open_engine(two_url)
    try:
        expected = rows(one_engine)
        assert sum(len(rows) for rows in expected.values()) > 5_000
        assert differences(expected, rows(two_engine)) == {}

        # the two processes' batches interleaved: each wrote before the other had finished
        a_first, a_last = loaded_at_span(two_engine, resource_keys(a))
        b_first, b_last = loaded_at_span(two_engine, resource_keys(b))
        assert a_first < b_last and b_first < a_last

        # every resource counted once, by the process that read it; nothing waits in either CDM
        for state in ("loaded", "quarantined", "skipped"):
            assert a_summary[state] + b_summary[state] == one[state], state
        assert one["unresolved_references"] == a_summary["unresolved_references"] == b_summary["unresolved_references"] == {}
        assert not expected["pending_reference"]
        # exit status: 3 exactly for a process whose own files held something quarantined
        bad = quarantined_files(two_engine)
        assert one_code == (EXIT_PARTIAL if bad else EXIT_OK)
        assert a_code == (EXIT_PARTIAL if any(f.startswith(str(a)) for f in bad) else EXIT_OK)
        assert b_code == (EXIT_PARTIAL if any(f.startswith(str(b)) for f in bad) else EXIT_OK)
        if export == "synthetic":
            assert bad, "the generator's planted bad records are quarantined"

        # both again, at once: nothing changes, the bad records are reported again
        before = source_records(two_engine)
        (a_again, a_rerun), (b_again, b_rerun) = ingest_together(two_url, a, b)
        assert (a_again, b_again) == (a_code, b_code)
        for summary, first in ((a_rerun, a_summary), (b_rerun, b_summary)):
            assert summary["loaded"] == summary["updated"] == 0
            # what mapped to no row is remembered too (load.NO_ROW): unchanged, not skipped again
            no_row = sum(n for reason, n in first["skipped_by_reason"].items() if reason.endswith("maps to no CDM row"))
            assert summary["unchanged"] == first["loaded"] + no_row and summary["skipped"] == first["skipped"] - no_row
            assert summary["quarantined"] == first["quarantined"]
        assert source_records(two_engine) == before
        assert differences(expected, rows(two_engine)) == {}
    finally:
        one_engine.dispose()
        two_engine.dispose()


def blocked_loader_then_waiter(url: str, table: str, loader: list[Path], waiter: list[Path]) -> list[tuple[int, dict]]:
    """Start a run loading ``loader`` and hold it at its first insert into ``table`` (a SHARE lock on
    the table, taken here); start a run loading ``waiter`` and let it finish loading and wait for
    the first run; then let the first run go.  Returns both runs' outcomes."""
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(table)))
        first = start_ingest(url, *loader)
        wait_until(watcher, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                            " WHERE NOT l.granted AND c.relname = %s", (table,), first)
        second = start_ingest(url, *waiter)
        wait_until(watcher, None, None, second)
        assert first.poll() is None, "the loader is held"
        holder.rollback()  # the loader goes on
        return [outcome(first), outcome(second)]


def wait_until(watcher: psycopg.Connection, query: str | None, params, process: subprocess.Popen) -> None:
    """Until ``query`` counts a row (default: a run waiting on the loaders' lock), while ``process`` runs."""
    deadline = time.monotonic() + 120
    while (watcher.execute(query, params).fetchone()[0] if query else waiting_on_loading_lock(watcher)) < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def cut(source: Path, folder: Path, *types: str) -> Path:
    folder.mkdir(parents=True)
    for resource_type in types:
        name = f"{resource_type}.000.ndjson"
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


@pytest.mark.parametrize("case", ["patients", "references"])
def test_a_run_whose_resources_wait_for_another_runs_waits_for_it_to_load(case, shared_dir, tmp_path, new_database):
    """A run whose resources name a patient or a practitioner, organisation or location that another
    run is still loading (held here at its first insert) maps them, fills their references and exits
    0 once that run has loaded them: not quarantined, not left pending.  Same rows as one run."""
    source = shared_dir / "fhir" / "synthea-bulk-10"
    if case == "patients":
        table, loader, waiter = "person", [cut(source, tmp_path / "p", "Patient")], [cut(source, tmp_path / "c", "Condition")]
    else:
        table = "provider"
        loader = [cut(source, tmp_path / "o", "Organization", "Location", "Practitioner")]
        waiter = [cut(source, tmp_path / "e", "Patient", "Encounter")]
    one_url, two_url = new_database(), new_database()
    one_code, one = outcome(start_ingest(one_url, *loader, *waiter))
    (loader_code, loader_summary), (waiter_code, waiter_summary) = blocked_loader_then_waiter(two_url, table, loader, waiter)
    # exit 3 and references waiting only as in one run (the conditions' encounters are in neither)
    assert loader_code == EXIT_OK and waiter_code == one_code
    assert waiter_summary["quarantined"] == one["quarantined"] == 0
    assert waiter_summary["unresolved_references"] == one["unresolved_references"]
    assert one["unresolved_references"] == ({"Encounter": 555} if case == "patients" else {})
    assert loader_summary["loaded"] + waiter_summary["loaded"] == one["loaded"]
    one_engine, two_engine = open_engine(one_url), open_engine(two_url)
    try:
        expected = rows(one_engine)
        if case == "references":
            visits = tables["visit_occurrence"]
            with one_engine.connect() as conn:
                assert conn.execute(select(func.count()).where(visits.c.provider_id.isnot(None))).scalar_one() > 1_000
        assert differences(expected, rows(two_engine)) == {}
    finally:
        one_engine.dispose()
        two_engine.dispose()


def test_a_batch_that_meets_a_row_another_process_commits_meanwhile_is_written_again(tmp_path, new_database):
    """Another writer inserts one of the batch's ``person`` rows (uncommitted) before the batch's
    ``COPY`` reaches it; the COPY waits for that transaction, which then commits: the batch fails on
    the primary key, is rolled back, and is written again with that row present (filled, not
    inserted).  The run ends as if it had been alone."""
    source = synthetic_export(tmp_path)
    patients = cut(source, tmp_path / "p", "Patient")
    assert len((patients / "Patient.000.ndjson").read_bytes().splitlines()) >= 100  # COPY, not INSERT
    one_url, two_url = new_database(), new_database()
    one_code, one = outcome(start_ingest(one_url, patients))
    one_engine = open_engine(one_url)
    person = tables["person"]
    with one_engine.connect() as conn:
        taken = conn.execute(select(person).order_by(person.c.person_id).limit(1)).mappings().one()
    with psycopg.connect(two_url) as other, psycopg.connect(two_url, autocommit=True) as watcher:
        columns = list(taken)
        other.execute(sql.SQL("INSERT INTO person ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))),
            [taken[c] for c in columns])
        process = subprocess.Popen([str(BIN / "radfed-node"), "--db", two_url, "ingest", "fhir", "--json",
                                    "--no-progress", "--batch-size", "5000", str(patients)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(watcher, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                            " WHERE NOT l.granted AND l.locktype = 'transactionid' AND a.datname = current_database()",
                   None, process)
        other.commit()  # the COPY now meets a committed duplicate key
        code, summary = outcome(process)
    two_engine = open_engine(two_url)
    try:
        assert code == one_code == EXIT_OK and summary["loaded"] == one["loaded"]
        assert differences(rows(one_engine), rows(two_engine)) == {}
    finally:
        one_engine.dispose()
        two_engine.dispose()


def test_the_same_files_given_to_two_processes_at_once_are_loaded_once(tmp_path, new_database):
    """Not the intended use (give each process its own files), but safe: two processes loading the
    same patients and conditions at once leave one copy of every row, as one process does."""
    source = synthetic_export(tmp_path)
    both = cut(source, tmp_path / "pc", "Patient", "Condition")
    one_url, two_url = new_database(), new_database()
    one_code, one = outcome(start_ingest(one_url, both))
    (a_code, a_summary), (b_code, b_summary) = ingest_together(two_url, both, both)
    assert a_code == b_code == one_code
    for summary in (a_summary, b_summary):  # each read every resource and loaded or found it unchanged
        assert summary["loaded"] + summary["updated"] + summary["unchanged"] == one["loaded"]
    one_engine, two_engine = open_engine(one_url), open_engine(two_url)
    try:
        assert differences(rows(one_engine), rows(two_engine)) == {}
    finally:
        one_engine.dispose()
        two_engine.dispose()


def test_a_session_lock_wait_names_the_holders_and_gives_up_at_its_timeout(new_database):
    """``cdm.locks.hold`` with ``waiting`` tells who holds the lock (their pid and application name,
    read from ``pg_locks``), gives up after ``timeout`` seconds without the lock, and takes it as
    soon as it is free."""
    url = new_database()
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SET application_name = 'another loading run'")
        other.execute("SELECT pg_advisory_lock_shared(%s)", (lock_key(LOADING),))
        engine = open_engine(url)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                told = []
                started = time.monotonic()
                assert not hold(conn, LOADING, waiting=lambda holders, waited: told.append((holders, waited)), timeout=1.5)
                assert 1.4 < time.monotonic() - started < 10
                assert told and [(h.pid, h.application) for h in told[0][0]] == [(other.info.backend_pid, "another loading run")]
                assert waiting_on_loading_lock(other) == 0  # not left in the queue
                other.execute("SELECT pg_advisory_unlock_shared(%s)", (lock_key(LOADING),))
                assert hold(conn, LOADING, waiting=lambda holders, waited: told.append(holders), timeout=5)
                assert other.execute("SELECT pg_try_advisory_lock_shared(%s)", (lock_key(LOADING),)).fetchone()[0] is False
                release(conn, LOADING)
                assert conn.execute(select(func.current_setting("lock_timeout"))).scalar_one() == "0"
        finally:
            engine.dispose()


def test_a_run_waiting_for_another_says_which_and_stops_waiting_at_its_timeout(shared_dir, tmp_path, new_database):
    """A run whose Conditions wait for their patients, while another run (here a session holding the
    loaders' lock and never letting go) is loading: with ``--wait-timeout`` it names that run on
    stderr, stops waiting, quarantines the Conditions as UNKNOWN_PATIENT and exits 3, all while the
    other still holds on; nothing is lost: once the Patients are loaded the same command loads them.
    Without a timeout it waits and finishes as soon as the other run has loaded."""
    source = shared_dir / "fhir" / "synthea-bulk-10"
    conditions, patients = cut(source, tmp_path / "c", "Condition"), cut(source, tmp_path / "p", "Patient")
    expected = sum(1 for line in (conditions / "Condition.000.ndjson").read_bytes().splitlines() if line.strip())
    url = new_database()
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SET application_name = 'the other run'")
        other.execute("SELECT pg_advisory_lock_shared(%s)", (lock_key(LOADING),))
        process = subprocess.Popen([str(BIN / "radfed-node"), "--db", url, "ingest", "fhir", "--json", "--no-progress",
                                    "--wait-timeout", "2", str(conditions)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=300)
        assert process.returncode == EXIT_PARTIAL, err.decode()
        summary = json.loads(out)
        assert f"the other run (PostgreSQL pid {other.info.backend_pid}" in err.decode()
        assert summary["gave_up_waiting_for"] == ["runs loading this CDM"]
        assert summary["quarantined_by_reason"] == {"UNKNOWN_PATIENT": expected} and summary["loaded"] == 0
        # without a timeout it waits for the other run, and goes on once that one has loaded
        waiter = start_ingest(url, conditions)
        wait_until(other, None, None, waiter)
        time.sleep(1)
        assert waiter.poll() is None, "it waits"
        released = time.monotonic()
        other.execute("SELECT pg_advisory_unlock_shared(%s)", (lock_key(LOADING),))
        code, again = outcome(waiter)
        assert time.monotonic() - released < 60 and again["gave_up_waiting_for"] == []
        assert again["quarantined_by_reason"] == {"UNKNOWN_PATIENT": expected}  # no patient anywhere yet
    assert outcome(start_ingest(url, patients))[0] == EXIT_OK
    code, last = outcome(start_ingest(url, conditions))
    assert last["loaded"] == expected and last["quarantined"] == 0
    engine = open_engine(url)
    try:
        assert quarantined_files(engine) == set()
    finally:
        engine.dispose()
