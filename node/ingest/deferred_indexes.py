"""The person tables' secondary indexes, set aside while a large load fills a SQLite CDM.

A B-tree index puts each new row where its key falls.  radfed's row ids are hashes
(:mod:`cdm.ids`), so once a table outgrows SQLite's page cache every insert lands on a page that
is no longer in memory, and every commit writes those pages out again.  Measured on this 2-core
machine (benchmarks/README.md, issue 23): 2.5M rows shaped like ``measurement`` (3 indexes) plus
their ``source_record`` rows cost 89 CPU us a row with the indexes in place by the end, against 35
without them; building the 4 indexes once at the end, from the finished table, sorts instead of
seeking and costs a small fraction of that.

So a run that will at least double what the CDM holds drops the non-unique indexes of the tables
that hold facts about persons (every table with a ``person_id`` column) before it loads, and
creates them again before it computes observation periods (which read by person).  Nothing the
loader asks during the load uses them: it finds rows by primary key and ``source_record``, whose
indexes stay, as do the vocabulary's and every unique index.

Only SQLite: one process writes a SQLite CDM at a time, whereas PostgreSQL runs may load one CDM
together (:mod:`node.ingest.concurrency`) and one must not take away another's indexes.  While the
load runs, queries of the node still answer, more slowly.  A run that is killed before it ends
leaves the indexes missing; the next ingest run creates whatever is missing before it starts
(:func:`restore`), whether or not it sets them aside again.
"""

from __future__ import annotations

from sqlalchemy import Engine, Index, func, inspect, select

from cdm.db import layout_of
from cdm.schema import tables

#: Rows a run must be expected to add (and at least what the CDM holds) for the indexes to go.
MIN_NEW_ROWS = 100_000
#: NDJSON bytes per CDM row written, roughly (1.06M resources, 891 MB, ~2M rows with source_record
#: counted once): what a run's input size predicts.
BYTES_PER_ROW = 400


def deferrable() -> list[Index]:
    """The non-unique indexes of the tables with a ``person_id`` column, in a fixed order."""
    return [index for name in sorted(tables) if "person_id" in tables[name].c
            for index in sorted(tables[name].indexes, key=lambda i: i.name) if not index.unique]


def restore(engine: Engine) -> int:
    """Create every deferrable index that is missing; returns how many were created."""
    if engine.dialect.name != "sqlite" or layout_of(engine) is not None:
        return 0
    indexes = deferrable()
    with engine.begin() as conn:
        existing = {(table, found["name"]) for table in {i.table.name for i in indexes}
                    for found in inspect(conn).get_indexes(table)}
        missing = [index for index in indexes if (index.table.name, index.name) not in existing]
        for index in missing:
            index.create(conn)
    return len(missing)


def set_aside(engine: Engine, input_bytes: int, force: bool | None = None) -> bool:
    """Drop the deferrable indexes when this load is worth it (``force``: decide instead); first
    restores any a killed run left missing.  Returns whether they were dropped (then call
    :func:`restore` when the load is done)."""
    restore(engine)
    if engine.dialect.name != "sqlite" or layout_of(engine) is not None or force is False:
        return False
    if force is None:
        expected = input_bytes // BYTES_PER_ROW
        with engine.connect() as conn:
            held = conn.execute(select(func.count()).select_from(tables["source_record"])).scalar_one()
        if expected < max(MIN_NEW_ROWS, held):
            return False
    with engine.begin() as conn:
        for index in deferrable():
            index.drop(conn)
    return True
