"""The floor under the FHIR ingest's loader: what SQLite alone costs for the rows an export writes.

The loader (the one process that writes) cannot go below the cost of the SQL it sends.  This
benchmark measures that floor in two steps:

``capture`` loads a folder with one worker into a fresh SQLite CDM, exactly as ``ingest_paths``
does, and writes every statement the loading process sends (text, parameters, executemany or not)
and every commit to a file, one pickle after another, so memory stays flat at 1M resources.  It
prints the SQL time by statement and table as the run saw it.

``replay`` opens a fresh CDM with the loader's pragmas (WAL, synchronous NORMAL, a 128 MB page
cache: ``cdm.db``, ``node.ingest.load.WRITE_CACHE_KIB``) and sends the captured statements again
with the plain ``sqlite3`` driver, committing where the run committed: no SQLAlchemy, no mapping,
no unpickling, only SQLite.  Its CPU per resource is the floor of today's write path.  Variants show
what a change of the bookkeeping table would buy, each prepared before the clock starts:

- ``current``: the statements as sent;
- ``one-source-record-per-resource``: ``source_record`` as one row a resource, keyed by an integer
  (the stable id of its source key), its CDM rows in one text column, no second index;
- ``no-source-record``: no ``source_record`` at all (a bound, not a design: re-runs need it);
- ``sequential-row-ids``: as sent, but each CDM table's row ids renumbered 1, 2, 3... in the order
  written (rows appended at the end of their table's B-tree instead of at a random place, as the
  62-bit stable ids of ``cdm.ids`` put them; ``source_record`` as sent).  Foreign keys are not
  renumbered: the cost of the writes, not the meaning of the rows;
- ``one-source-record-per-resource+sequential-row-ids``: both.

    .venv/bin/python benchmarks/bench_fhir_sql_floor.py capture /tmp/radfed-bench-fhir-2000/site-1/fhir /tmp/sql-92k.pkl
    .venv/bin/python benchmarks/bench_fhir_sql_floor.py replay /tmp/sql-92k.pkl [--variant current] [--repeat 2]

``replay`` prints one line a run; ``--results FILE`` appends them as JSON lines.  ``--pragma`` adds
a pragma after the loader's (a bigger page cache, memory-mapped I/O) and ``--sort-batches`` sends
each batch's rows in key order, ``--commit-every K`` commits at every K-th of the run's commits only
(bigger transactions): what the write path's settings, not its design, would change.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import sqlite3
import tempfile
import time

COMMIT = "COMMIT"
#: The capture's last entry: ``(RESOURCES, how many resources the run read, False)``.
RESOURCES = "RESOURCES"
VARIANTS = ("current", "one-source-record-per-resource", "no-source-record", "sequential-row-ids",
            "one-source-record-per-resource+sequential-row-ids")
_TABLE = re.compile(r"\b(?:INTO|FROM|UPDATE|TABLE|ON)\s+\"?(\w+)", re.IGNORECASE)  # \b: not the "on" of "person"


def _plain(values):
    """Parameters as the driver took them, picklable (quarantine payloads arrive as memoryviews)."""
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)


def capture(folder: str, out: str) -> None:
    from sqlalchemy import event

    from cdm.db import create_cdm, open_engine
    from node.ingest import engine as ingest

    spent: dict[tuple, float] = collections.defaultdict(float)
    rows: collections.Counter = collections.Counter()
    started: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, open(out, "wb") as sink:
        engine = open_engine(os.path.join(tmp, "cdm.sqlite"))
        create_cdm(engine, source_name="bench")

        @event.listens_for(engine, "before_cursor_execute")
        def before(conn, cursor, statement, parameters, context, executemany):
            started.append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn, cursor, statement, parameters, context, executemany):
            seconds = time.perf_counter() - started.pop()
            table = _TABLE.search(statement)
            key = (statement.split()[0].upper(), table.group(1) if table else "?")
            spent[key] += seconds
            if executemany:
                rows[key] += len(parameters)
                parameters = [_plain(p) for p in parameters]
            else:
                rows[key] += 1
                parameters = _plain(parameters) if isinstance(parameters, (tuple, list)) else parameters
            pickle.dump((statement, parameters, executemany), sink, pickle.HIGHEST_PROTOCOL)

        @event.listens_for(engine, "commit")
        def commit(conn):
            pickle.dump((COMMIT, None, False), sink, pickle.HIGHEST_PROTOCOL)

        cpu = time.process_time()
        summary = ingest.ingest_paths(engine, [folder], workers=1)
        cpu = time.process_time() - cpu
        engine.dispose()
        n = summary.total()
        pickle.dump((RESOURCES, n, False), sink, pickle.HIGHEST_PROTOCOL)
    print(f"captured {n:,} resources -> {out}; loader {cpu * 1e6 / n:.1f} CPU us a resource, "
          f"SQL as the run saw it {sum(spent.values()) * 1e6 / n:.1f} us a resource (commits not included):")
    for key, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {seconds * 1e6 / n:6.1f} us  {rows[key]:>10,} rows  {key[0]} {key[1]}")


def _statements(path: str):
    with open(path, "rb") as source:
        while True:
            try:
                yield pickle.load(source)
            except EOFError:
                return


def _source_record_per_resource(statement: str, parameters: list) -> list[tuple]:
    """The captured source_record rows regrouped as one row a resource (the variant's table)."""
    from cdm.ids import stable_id

    columns = [c.strip().strip('"') for c in re.search(r"\(([^)]*)\)", statement).group(1).split(",")]
    grouped: dict[str, list] = {}
    for values in parameters:
        row = dict(zip(columns, values))
        entry = grouped.setdefault(row["source_key"], [row["content_hash"], row["loaded_at"], []])
        entry[2].append(f"{row['cdm_table']}:{row['cdm_id']}")
    return [(stable_id(key), key, content_hash, " ".join(cdm_rows), loaded_at)
            for key, (content_hash, loaded_at, cdm_rows) in grouped.items()]


def _prepared(path: str, variant: str, sort_batches: bool) -> tuple[list, int]:
    """The statements to send for ``variant``, built before the clock starts."""
    prepared, n = [], 0
    renumbered: dict[str, dict[int, int]] = {}
    for statement, parameters, many in _statements(path):
        if statement == RESOURCES:
            n = parameters
            continue
        bookkeeping = "source_record" in statement and statement != COMMIT
        inserting = many and statement.lstrip().upper().startswith("INSERT")
        if bookkeeping and variant == "no-source-record":
            continue
        if bookkeeping and "one-source-record-per-resource" in variant:
            if inserting:
                prepared.append(("INSERT OR REPLACE INTO source_record VALUES (?, ?, ?, ?, ?)",
                                 _source_record_per_resource(statement, parameters), True))
            continue  # its look-ups and index statements have no counterpart in a first load
        if "sequential-row-ids" in variant and inserting and not bookkeeping:
            table = _TABLE.search(statement).group(1)
            numbers = renumbered.setdefault(table, {})
            parameters = [(numbers.setdefault(p[0], len(numbers) + 1), *p[1:]) if isinstance(p[0], int) else p
                          for p in parameters]
        if sort_batches and inserting:
            parameters = sorted(parameters)  # by the first column: each table's key (source_key for source_record)
        prepared.append((statement, parameters, many))
    return prepared, n


def replay(path: str, variant: str, pragmas: list[str], sort_batches: bool, commit_every: int = 1) -> dict:
    from cdm.db import create_cdm, open_engine
    from node.ingest.load import WRITE_CACHE_KIB

    prepared, n = _prepared(path, variant, sort_batches)
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "cdm.sqlite")
        engine = open_engine(file)
        create_cdm(engine, source_name="bench")
        engine.dispose()
        connection = sqlite3.connect(file, isolation_level=None)
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA cache_size=-{WRITE_CACHE_KIB}")
        for pragma in pragmas:
            connection.execute(f"PRAGMA {pragma}")
        if "one-source-record-per-resource" in variant:
            connection.execute("DROP TABLE source_record")
            connection.execute("CREATE TABLE source_record (key_id INTEGER PRIMARY KEY, source_key TEXT NOT NULL, "
                               "content_hash TEXT NOT NULL, cdm_rows TEXT NOT NULL, loaded_at TEXT NOT NULL)")
        cursor = connection.cursor()
        failed = commits = 0
        cpu, wall = time.process_time(), time.perf_counter()
        for statement, parameters, many in prepared:
            if statement == COMMIT:
                commits += 1
                if connection.in_transaction and commits % commit_every == 0:
                    connection.execute(COMMIT)
                continue
            if not connection.in_transaction:
                connection.execute("BEGIN")
            try:
                if many:
                    cursor.executemany(statement, parameters)
                else:
                    cursor.execute(statement, parameters or ())
            except sqlite3.Error:
                failed += 1  # a statement against the variant's missing table: its cost is the point
        if connection.in_transaction:
            connection.execute(COMMIT)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        connection.close()
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    return {"variant": variant, "pragmas": pragmas, "sorted_batches": sort_batches, "commit_every": commit_every,
            "resources": n, "cpu_us_per_resource": round(cpu * 1e6 / n, 1),
            "wall_us_per_resource": round(wall * 1e6 / n, 1), "file_mb": round(size / 1e6),
            "statements_failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("capture")
    cap.add_argument("folder")
    cap.add_argument("out")
    rep = commands.add_parser("replay")
    rep.add_argument("capture")
    rep.add_argument("--variant", choices=VARIANTS, action="append")
    rep.add_argument("--repeat", type=int, default=1)
    rep.add_argument("--results")
    rep.add_argument("--pragma", action="append", default=[],
                     help="another pragma after the loader's, e.g. mmap_size=4294967296 or cache_size=-1048576")
    rep.add_argument("--sort-batches", action="store_true", help="each executemany's rows sorted by their key")
    rep.add_argument("--commit-every", type=int, default=1, help="commit at every K-th of the run's commits only")
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.folder, args.out)
        return
    for _ in range(args.repeat):
        for variant in args.variant or VARIANTS:
            result = replay(args.capture, variant, args.pragma, args.sort_batches, args.commit_every)
            print(f"{variant:32s} {' '.join(args.pragma)}{' sorted' if args.sort_batches else ''}"
                  f"{f' commit every {args.commit_every}' if args.commit_every > 1 else ''} {result['cpu_us_per_resource']:6.1f} CPU us a resource, "
                  f"{result['wall_us_per_resource']:6.1f} wall, {result['file_mb']} MB "
                  f"({result['statements_failed']} statements failed)")
            if args.results:
                with open(args.results, "a") as sink:
                    sink.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
