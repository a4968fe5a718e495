"""Why a SQLite CDM gets slower to load as it grows: random-key inserts, with and without indexes.

radfed's row ids are 62-bit hashes (cdm/ids.py), so a table's rows arrive in random key order.
This benchmark inserts rows shaped like the FHIR ingest's commonest ones into a fresh SQLite file,
in transactions of 10,000 (the ingest's batches: 5,000 resources, ~2 rows each), with the CDM's
pragmas (WAL, synchronous=NORMAL): a ``measurement``-like table (random INTEGER PRIMARY KEY,
the three OMOP indexes on person, concept and date) and its ``source_record``-like row (text
primary key ``fhir|Observation|<uuid>`` plus the (table, id) index).  It prints the CPU
microseconds per row pair, and of them the commit's, for each 500,000 pairs, so the growth with
the file shows, for one configuration per run:

    default           the CDM as created (SQLite's 2 MB page cache)
    cache<KiB>        PRAGMA cache_size=-<KiB>            e.g. cache262144 (256 MB)
    mmap<MiB>         PRAGMA mmap_size                    e.g. mmap4096
    wal<pages>        PRAGMA wal_autocheckpoint           e.g. wal50000
    noidx             the measurement indexes and the (table, id) index built only at the end
                      (node/ingest/deferred_indexes.py does this for the person tables)

    python3 benchmarks/bench_sqlite_growth.py default 2500000
    python3 benchmarks/bench_sqlite_growth.py noidx 2500000

Only the standard library: the figure is SQLite's own cost, not radfed's Python.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid

BATCH = 10_000
REPORT = 500_000
MEASUREMENT_INDEXES = ["CREATE INDEX m1 ON m(person_id)", "CREATE INDEX m2 ON m(concept_id, person_id, d)",
                       "CREATE INDEX m3 ON m(person_id, concept_id, d)"]
RECORD_INDEX = "CREATE INDEX sr1 ON sr(cdm_table, cdm_id)"


def main(mode: str, rows: int) -> None:
    path = os.path.join(tempfile.gettempdir(), f"radfed-sqlite-growth-{mode}-{os.getpid()}.db")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        run(db, mode, rows)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


def run(db: sqlite3.Connection, mode: str, rows: int) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for prefix, pragma in (("cache", "cache_size=-{}"), ("mmap", "mmap_size={}"), ("wal", "wal_autocheckpoint={}")):
        if mode.startswith(prefix):
            value = int(mode[len(prefix):]) * (1 << 20 if prefix == "mmap" else 1)
            db.execute(f"PRAGMA {pragma.format(value)}")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, person_id INTEGER, concept_id INTEGER, d TEXT, v REAL, s TEXT)")
    db.execute("CREATE TABLE sr (source_key TEXT, cdm_table TEXT, cdm_id INTEGER, h TEXT, t TEXT, "
               "PRIMARY KEY (source_key, cdm_table, cdm_id))")
    deferred = mode == "noidx"
    if not deferred:
        for statement in [*MEASUREMENT_INDEXES, RECORD_INDEX]:
            db.execute(statement)
    rnd = random.Random(1)
    persons = [rnd.getrandbits(62) for _ in range(23_000)]
    cpu, commit, done = time.process_time(), 0.0, 0
    while done < rows:
        batch = [(rnd.getrandbits(62), rnd.choice(persons), 2_000_100_000 + rnd.randrange(500), "2020-01-01", 1.5, "x")
                 for _ in range(BATCH)]
        records = [(f"fhir|Observation|{uuid.UUID(int=rnd.getrandbits(128))}", "measurement", r[0], "h" * 64,
                    "2026-12-06 10:00:00.000000") for r in batch]
        db.execute("BEGIN")
        db.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", batch)
        db.executemany("INSERT INTO sr VALUES (?, ?, ?, ?, ?)", records)
        started = time.process_time()
        db.execute("COMMIT")
        commit += time.process_time() - started
        done += BATCH
        if done % REPORT == 0:
            now = time.process_time()
            print(f"{mode}: {done:,} row pairs: {(now - cpu) * 1e6 / REPORT:.1f} CPU us a pair, "
                  f"of which commit {commit * 1e6 / REPORT:.1f}", flush=True)
            cpu, commit = now, 0.0
    if deferred:
        started = time.process_time()
        for statement in [*MEASUREMENT_INDEXES, RECORD_INDEX]:
            db.execute(statement)
        print(f"{mode}: building the 4 indexes at the end: {(time.process_time() - started) * 1e6 / done:.1f} "
              f"CPU us a pair", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2_500_000)
