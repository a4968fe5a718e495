"""Writing mapped resources to the CDM in batches, idempotently, with ``source_record`` bookkeeping.

A batch is one transaction: the previous rows of every updated resource are deleted (found through
``source_record``), the new rows are inserted table by table (one ``COPY ... FROM STDIN`` each on
PostgreSQL, PostgreSQL docs "COPY", about 3x faster than a multi-row INSERT; one executemany on
SQLite), and one ``source_record`` row per CDM row remembers which resource wrote it and the
resource's content hash (a resource that maps to no row gets one :data:`NO_ROW` record instead).
An interrupted load therefore keeps whole batches, and re-running it rewrites nothing unchanged.

Several processes may load disjoint files into one PostgreSQL CDM at once (:mod:`node.ingest.concurrency`
orders their ends).  A batch is then safe against the others' batches this way: the tables without a
unique key (:data:`KEY_COLUMNS`) and the first claim of an identifier are select-then-insert under a
transaction advisory lock (:mod:`cdm.locks`); elsewhere the primary key arbitrates: a batch that
inserts a row another process committed meanwhile (a unique violation) or that deadlocks with
another is rolled back and written again against what the CDM holds then — the row is found
present and filled, a resource another process loaded meanwhile is replaced (:meth:`BatchWriter.write`).
Tables and rows are written in key order, so two batches take their row locks in the same order.
A reference whose target another process writes after this one looked is filled at the end
(:meth:`BatchWriter.resolve_stored`).

Rows are identified by their table's primary key; the OMOP tables without one are keyed by
:data:`KEY_COLUMNS` (``death`` has one row per person).  A row that already exists but belongs to
another source (an ``image_occurrence`` the DICOM index wrote first, say) is not replaced: the
columns it left empty are filled, the rest is kept, as :mod:`node.dicom.mapping` does the other way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import (
    Connection, Engine, Select, String, Table, and_, any_, bindparam, delete, func, insert, select, update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import DATE as SQLITE_DATE, DATETIME as SQLITE_DATETIME, JSON as SQLITE_JSON

from cdm.ids import stable_id
from cdm.locks import retry_conflicts, xact_lock
from cdm.schema import tables
from node.ingest.contract import Row
from node.quarantine import QUARANTINE, quarantine

SOURCE_RECORD = tables["source_record"]
PENDING = tables["pending_reference"]
#: Key column of the OMOP tables that have no single-column primary key.
KEY_COLUMNS = {"death": "person_id", "episode_event": "event_id", "fact_relationship": "fact_id_1"}
#: Bound parameters per IN list (SQLite's default limit is 32,766; PostgreSQL's 65,535).
CHUNK = 2_000
ALIAS_MARK = "?identifier="
#: Keys per content-hash look-up on PostgreSQL (few enough to probe its index: :func:`hash_lookup`).
LOOKUP_CHUNK = 500
#: Below this many rows a COPY's set-up costs more than the INSERT it replaces.
COPY_MIN_ROWS = 50
#: The column a reference to a table fills when it is not ``<table>_id`` (a note's imaging study).
REFERENCE_COLUMNS = {"image_occurrence": "note_event_id"}
#: Transaction advisory lock of the first claim of an identifier (``fhir|Type?identifier=...``).
IDENTIFIER_CLAIMS = "fhir ingest: identifier claims"
#: SQLite page cache of the connection a run writes with, in KiB (SQLite's default is 2 MB): with the
#: default, every batch re-reads the pages of the indexes it inserts into from the operating system
#: once the CDM outgrows it (~14% of the loader's time in the kernel at 92k resources; 128 MB cut the
#: loader's CPU per row by ~20% at 2.5M rows).  Only pages the run touches are held; the run's
#: end sets it back (:meth:`BatchWriter.close`).
WRITE_CACHE_KIB = 128 * 1024


@lru_cache(maxsize=None)
def key_column(table_name: str) -> str:
    """The column identifying a row of ``table_name``."""
    if table_name in KEY_COLUMNS:
        return KEY_COLUMNS[table_name]
    primary = list(tables[table_name].primary_key.columns)
    if len(primary) != 1:
        raise KeyError(f"table {table_name} has no single-column key")
    return primary[0].name


@lru_cache(maxsize=None)
def _all_columns(table_name: str) -> tuple[str, ...]:
    return tuple(tables[table_name].c.keys())


#: The ``source_record`` columns :meth:`BatchWriter._record` writes, in the order of its tuples.
RECORD_COLUMNS = ("source_key", "cdm_table", "cdm_id", "content_hash", "loaded_at")
#: ``(cdm_table, cdm_id)`` of the one ``source_record`` row of a resource that was loaded and maps to
#: no CDM row (entered-in-error, not-done, a report with neither result, conclusion nor form): its
#: content hash is remembered like that of a resource with rows, so the next run finds it unchanged
#: (:func:`existing_hashes`) instead of validating and mapping it again, and an update of it replaces
#: the marker (:meth:`BatchWriter._delete_previous`).  Not a table name: every reader of
#: ``source_record`` that looks for rows names their table, and the one that goes through a resource's
#: records skips names the schema does not have.  Whether a resource maps to a row depends on its
#: content alone (its status, attachments, components, patient), never on the vocabulary, which
#: chooses only the concept and table of a row: a vocabulary load leaves the markers as they are
#: (:func:`cdm.vocabulary.remap_loaded_rows` marks only resources with rows stale).
NO_ROW = ("(no row)", 0)
#: What :func:`existing_hashes` answers on PostgreSQL for a resource ``source_record`` holds two
#: content hashes of (two runs loading the same resource at once, one to rows and one to no row:
#: no key arbitrates their records): never a content hash, so the next run maps the resource again
#: and replaces both.  SQLite has one run at a time (:mod:`node.ingest.concurrency`).
CONFLICTING_HASHES = "conflicting hashes"


@lru_cache(maxsize=None)
def _columns(table_name: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """(all columns, required columns: NOT NULL or the key) of a table."""
    table, key = tables[table_name], key_column(table_name)
    return frozenset(table.c.keys()), tuple(c.name for c in table.columns if not c.nullable or c.name == key)


def row_problem(row: Row) -> str | None:
    """Why a mapper's row cannot be written (a mapper bug, reported as such), else ``None``."""
    if row.table not in tables:
        return f"mapper produced a row for unknown table {row.table!r}"
    try:
        known, required = _columns(row.table)
    except KeyError as exc:
        return str(exc)
    if not known.issuperset(row.values):
        return f"mapper produced unknown {row.table} column(s) {sorted(set(row.values) - known)}"
    if None in map(row.values.get, required):  # the values are plain: None is the only one equal to None
        missing = [c for c in required if row.values.get(c) is None]
        return f"{row.table} row lacks required column(s) {missing}"
    return None


def rows_problem(rows: list[Row]) -> str | None:
    """The first :func:`row_problem` of a resource's rows (the loader's and a worker's check)."""
    for row in rows:
        found = row_problem(row)
        if found:
            return found
    return None


@dataclass
class Mapped:
    """One resource ready to write: its key, content hash, rows and conditional-reference aliases
    (no rows: it maps to none, and only its :data:`NO_ROW` record is written)."""

    key: str
    content_hash: str
    rows: list[Row]
    aliases: list[tuple[str, str, int]] = field(default_factory=list)  # (alias key, cdm_table, row id)
    replaces: bool = False
    origin: tuple[str, int] | None = None  # (file, line) it was read from
    #: (target key, table, row id, column, target table) of references to resources not loaded yet
    pending: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    #: (key, table, row id) a reference to this resource (or one of its identifiers) resolves to
    provides: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass
class Rejected:
    """One piece of input for the quarantine table."""

    reason_code: str
    reason: str
    source_file: str
    line: int
    resource_type: str | None
    resource_id: str | None
    payload: bytes | None


def pending_references(unresolved: list[tuple[str, str]], rows: list[Row]) -> list[tuple[str, str, int, str, str]]:
    """The ``pending_reference`` entries of one mapped resource: each reference it made that named a
    resource not loaded yet (``unresolved``: target key, target table), on every row whose column for
    that table (``provider`` -> ``provider_id``) the mapper had to leave empty."""
    out = []
    for target_key, target_table in dict.fromkeys(unresolved):
        column = REFERENCE_COLUMNS.get(target_table, f"{target_table}_id")
        for row in rows:
            if column in tables[row.table].c and row.values.get(column) is None:
                out.append((target_key, row.table, row.values[key_column(row.table)], column, target_table))
    return out


def bulk_insert(conn: Connection, table: Table, rows: list, columns: tuple[str, ...] | None = None) -> None:
    """Insert ``rows`` into ``table`` within ``conn``'s transaction.

    ``rows`` are dicts (a missing key is NULL) with ``columns`` naming what to write (default: the
    keys of the first row), or tuples in the order of ``columns``.  On PostgreSQL with psycopg 3 this
    is one ``COPY table (columns) FROM STDIN`` fed row by row (psycopg's ``Cursor.copy``, values
    adapted by their Python types as for bound parameters); on SQLite the driver's executemany of the
    Core ``insert``'s SQL on value tuples (:func:`_sqlite_rows`); elsewhere, and for a few rows, one
    executemany of the Core ``insert``.  Either way a constraint violation fails the statement and
    rolls the batch back.
    """
    if not rows:
        return
    as_tuples = not isinstance(rows[0], dict)
    columns = tuple(columns if columns is not None else rows[0])
    dialect = conn.dialect.name
    driver = conn.connection.driver_connection
    if dialect == "sqlite" and len(rows) >= COPY_MIN_ROWS:
        statement, convert = _sqlite_rows(conn.dialect, table, columns, as_tuples)
        conn.exec_driver_sql(statement, convert(rows))
        return
    if dialect != "postgresql" or not hasattr(driver, "cursor") or len(rows) < COPY_MIN_ROWS:
        conn.execute(insert(table), [dict(zip(columns, r)) if as_tuples else {c: r.get(c) for c in columns}
                                     for r in rows])
        return
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(*([table.schema] if table.schema else []), table.name),
        sql.SQL(", ").join(map(sql.Identifier, columns)))
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        if as_tuples:
            for row in rows:
                copy.write_row(row)
        else:
            for row in rows:
                copy.write_row([row.get(c) for c in columns])


#: (table, columns, tuples?) -> the SQLite insert and its row converter (:func:`_sqlite_rows`)
_SQLITE_ROWS: dict[tuple, tuple] = {}


def _sqlite_rows(dialect, table: Table, columns: tuple[str, ...], as_tuples: bool):
    """The Core ``insert``'s SQL for ``columns`` and a function turning a list of rows into the value
    tuples the driver's executemany takes, each value through its column type's bind processor
    (``TypeEngine.dialect_impl().bind_processor``: SQLite's date and datetime strings, booleans as
    0/1, decimals as floats), as SQLAlchemy would: the same stored values (most dates and datetimes
    through ``isoformat``, which writes the same strings faster: :func:`_iso_binding`).

    The function is generated once per table and column list (as :func:`collections.namedtuple`
    generates its class): one expression per column, no per-value Python call where the column has
    no processor.  Building a parameter dict per row, and then a tuple per row through generic
    loops, cost more than SQLite's insert itself (benchmarks/README.md, issue 23).
    """
    key = (dialect.name, dialect.paramstyle, table.fullname, columns, as_tuples)
    found = _SQLITE_ROWS.get(key)
    if found is not None:
        return found
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    env: dict = {}
    values = []
    for name in compiled.positiontup:  # the statement's parameter order
        source = f"r[{columns.index(name)}]" if as_tuples else f"g({name!r})"
        impl = table.c[name].type.dialect_impl(dialect)
        processor = impl.bind_processor(dialect)
        if processor is None:
            values.append(source)
        else:
            env[f"p_{name}"] = processor
            value = f"p_{name}(v)"
            iso = _iso_binding(impl)
            if iso is not None:
                value = f"{iso} else {value}"
            values.append(f"(None if (v := {source}) is None else {value})")
    body = ", ".join(values) + ("," if len(values) == 1 else "")
    code = (f"def convert(rows):\n    return [({body}) for r in rows]\n" if as_tuples else
            f"def convert(rows):\n    return [({body}) for r in rows for g in (r.get,)]\n")
    env.update(date=dt.date, datetime=dt.datetime)
    exec(compile(code, f"<sqlite rows of {table.name}>", "exec"), env)  # noqa: S102 - column names from the schema
    found = _SQLITE_ROWS[key] = (str(compiled), env["convert"])
    return found


def _iso_binding(impl) -> str | None:
    """The start of a conditional expression of ``v`` giving the string SQLite's date or datetime
    bind processor stores, when Python's ``isoformat`` writes it the same way (a plain ``date``, a
    naive ``datetime``: ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM:SS.ffffff``), at a fifth of the
    processor's cost; anything else (an aware datetime, a date in a datetime column, a custom storage
    format) goes on to the processor.  ``None`` for other types."""
    if isinstance(impl, SQLITE_DATETIME) and impl._storage_format == SQLITE_DATETIME._storage_format:
        return "v.isoformat(' ', 'microseconds') if v.__class__ is datetime and v.tzinfo is None"
    if isinstance(impl, SQLITE_DATE) and impl._storage_format == SQLITE_DATE._storage_format:
        return "v.isoformat() if v.__class__ is date"
    return None


def _chunks(values: list, size: int = CHUNK) -> Iterable[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def hash_lookup(dialect: str, keys: list[str]) -> Select:
    """The query of the stored content hashes of ``keys``.

    On PostgreSQL the keys travel as one array parameter (``source_key = ANY(:keys)``: one plan,
    not one per list length); :func:`existing_hashes` runs it with sequential scans disabled, so it
    probes the primary key (whose first column is ``source_key``) whatever the planner's estimate:
    a re-run's cost then grows with the batch, not with the CDM (at ~160k rows and 2,000 keys the
    planner chose a full scan, 86 ms, against 4 index probes of 500 keys, 58 ms).
    On SQLite they travel as one JSON array (``IN (SELECT value FROM json_each(:keys))``, still a probe
    of that key per value): an expanding parameter renders a placeholder per key at every execution,
    about half of a worker's look-up of a unit's 2,000 keys (as :func:`_present`).
    On PostgreSQL each (key, hash) comes once (``DISTINCT``: a resource's rows share one hash, so a
    key met twice has two, :data:`CONFLICTING_HASHES`); on SQLite, where one run writes at a time,
    one pair per row (there the ``DISTINCT``'s temporary B-tree cost 1.2% more instructions than the
    rows it kept from Python: callgrind, the look-up of the 92k export's keys).
    """
    column = SOURCE_RECORD.c.source_key
    if dialect == "postgresql":
        where = column == any_(bindparam("keys", keys, type_=postgresql.ARRAY(String)))
    else:
        where = _among(column, dialect, bindparam("keys", keys, type_=SQLITE_JSON) if dialect == "sqlite"
                       else bindparam("keys", keys, expanding=True))
    query = select(column, SOURCE_RECORD.c.content_hash).where(where)
    return query.distinct() if dialect == "postgresql" else query


def probe_index(conn: Connection) -> None:
    """For the rest of ``conn``'s transaction, let PostgreSQL read tables by index only (see
    :func:`hash_lookup`)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")


def existing_hashes(engine: Engine, keys: list[str]) -> dict[str, str]:
    """``source_key -> content_hash`` of the resources among ``keys`` an earlier run loaded."""
    found: dict[str, str] = {}
    dialect = engine.dialect.name
    with engine.begin() as conn:
        probe_index(conn)
        for chunk in _chunks(sorted(set(keys)), LOOKUP_CHUNK if dialect == "postgresql" else CHUNK):
            pairs = conn.execute(hash_lookup(dialect, chunk)).all()
            if dialect != "postgresql":  # one run at a time (node.ingest.concurrency): no race
                found.update(pairs)
                continue
            hashes = dict(pairs)
            if len(hashes) < len(pairs):  # a key with two hashes: two runs raced (CONFLICTING_HASHES)
                for key, n in Counter(key for key, _digest in pairs).items():
                    if n > 1:
                        hashes[key] = CONFLICTING_HASHES
            found.update(hashes)
    return found


class BatchWriter:
    """Writes batches of :class:`Mapped` resources and :class:`Rejected` input, one transaction each.

    A resource that loads also clears what *earlier* runs quarantined of it (same type and id, or the
    same file and line): the site fixed it, and the quarantine should list only what is still wrong.
    What this run quarantines stays, even when a later line of the run loads the same resource.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        #: rows written per table this run (source_record included): what refresh_statistics needs
        self.rows_written: Counter = Counter()
        with engine.begin() as conn:  # a CDM created before the table existed (two runs may start at once)
            xact_lock(conn, "schema: pending_reference")
            PENDING.create(conn, checkfirst=True)
        with engine.connect() as conn:  # most loads meet an empty quarantine: then skip the clearing
            self._old_quarantine = conn.execute(select(QUARANTINE.c.quarantine_id).where(
                QUARANTINE.c.ingest_kind == "fhir", QUARANTINE.c.quarantined_at < self.started).limit(1)).first() is not None
            self._pending = conn.execute(select(PENDING.c.target_key).limit(1)).first() is not None
        #: pending references this run filled (their target arrived)
        self.references_resolved = 0

    def write(self, mapped: list[Mapped], rejected: list[Rejected]) -> set[int]:
        """Write one batch; returns the person ids whose rows it wrote.

        A batch that lost a race with another process's batch (:func:`cdm.locks.conflicted`) is
        rolled back and written again, its resources that another process loaded meanwhile now
        replacing that process's rows (the same resource in both runs' files: the last one wins).
        """
        batch = [mapped]

        def rejudge() -> None:
            batch[0] = self._rejudge(batch[0])

        written, resolved = retry_conflicts(lambda: self._write_once(batch[0], rejected), rejudge)
        mapped = batch[0]
        self.rows_written.update(written)
        self.references_resolved += resolved
        return {person for m in mapped for r in m.rows if (person := r.values.get("person_id")) is not None}

    def _write_once(self, mapped: list[Mapped], rejected: list[Rejected]) -> tuple[Counter, int]:
        """One transaction writing the batch: (rows written per table, references filled)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        written: Counter = Counter()
        resolved = 0
        with self.engine.begin() as conn:
            self._enlarge_cache(conn)
            rows = self._dedupe(mapped)
            # select-then-insert where no unique key arbitrates; all locks first, in key order
            xact_lock(conn, *(f"insert: {t}" for t in rows if t in KEY_COLUMNS),
                      *([IDENTIFIER_CLAIMS] if any(m.aliases for m in mapped) else []))
            replaced = [m.key for m in mapped if m.replaces]
            if replaced:
                self._delete_previous(conn, replaced)
            for table_name in sorted(rows):
                by_key = rows[table_name]
                self._insert_or_fill(conn, table_name, by_key)
                written[table_name] += len(by_key)
            written["source_record"] += self._record(conn, mapped, now)
            self._add_pending(conn, mapped, now)
            if self._pending:
                resolved = self._resolve_pending(conn, mapped)
            if self._old_quarantine and mapped:
                self._clear_quarantine(conn, mapped)
            for item in rejected:
                quarantine(conn, "fhir", item.reason_code, item.reason, source_file=item.source_file,
                           source_line=item.line, resource_type=item.resource_type,
                           resource_id=item.resource_id, payload=item.payload)
        return written, resolved

    #: key of :attr:`PoolProxiedConnection.info` holding a connection's page cache size before the run
    _CACHE_BEFORE = "radfed ingest: cache_size before"

    def _enlarge_cache(self, conn: Connection) -> None:
        """Give ``conn`` (SQLite) the page cache :data:`WRITE_CACHE_KIB`, once per connection."""
        info = conn.connection.info
        if conn.dialect.name == "sqlite" and self._CACHE_BEFORE not in info:
            info[self._CACHE_BEFORE] = conn.exec_driver_sql("PRAGMA cache_size").scalar()
            conn.exec_driver_sql(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")

    def close(self) -> None:
        """Give the connection the run wrote with its page cache size back (a pooled connection that
        is not the one checked out here keeps the larger cache until the pool closes it)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:
            before = conn.connection.info.pop(self._CACHE_BEFORE, None)
            if before is not None:
                conn.exec_driver_sql(f"PRAGMA cache_size = {int(before)}")

    def _rejudge(self, mapped: list[Mapped]) -> list[Mapped]:
        """``mapped`` with the resources another process loaded since they were judged new marked
        as replacing what it wrote."""
        new = [m.key for m in mapped if not m.replaces]
        if not new:
            return mapped
        stored = existing_hashes(self.engine, new)
        return [dataclasses.replace(m, replaces=True) if m.key in stored else m for m in mapped]

    # -- steps ---------------------------------------------------------------------------------------

    def _delete_previous(self, conn: Connection, keys: list[str]) -> None:
        """Delete the rows these resources wrote last time, unless another source also wrote them, and
        their records (a :data:`NO_ROW` record names no row to delete)."""
        old: dict[str, set[int]] = {}
        for chunk in _chunks(keys):
            for table_name, cdm_id in conn.execute(
                select(SOURCE_RECORD.c.cdm_table, SOURCE_RECORD.c.cdm_id).where(SOURCE_RECORD.c.source_key.in_(chunk))
            ):
                old.setdefault(table_name, set()).add(cdm_id)
            conn.execute(delete(SOURCE_RECORD).where(SOURCE_RECORD.c.source_key.in_(chunk)))
            if self._pending:
                conn.execute(delete(PENDING).where(PENDING.c.source_key.in_(chunk)))
        for table_name, ids in old.items():
            if table_name not in tables:
                continue
            table, column = tables[table_name], key_column(table_name)
            for chunk in _chunks(sorted(ids)):
                shared = set(conn.execute(select(SOURCE_RECORD.c.cdm_id).where(
                    SOURCE_RECORD.c.cdm_table == table_name, SOURCE_RECORD.c.cdm_id.in_(chunk),
                    ~SOURCE_RECORD.c.source_key.contains(ALIAS_MARK, autoescape=True))).scalars())
                own = [i for i in chunk if i not in shared]
                if own:
                    conn.execute(delete(table).where(table.c[column].in_(own)))
                    conn.execute(delete(SOURCE_RECORD).where(  # the identifiers of a deleted row go with it
                        SOURCE_RECORD.c.cdm_table == table_name, SOURCE_RECORD.c.cdm_id.in_(own)))

    def _add_pending(self, conn: Connection, mapped: list[Mapped], now: dt.datetime) -> None:
        entries = {(t, table, i, column): (target, m.key) for m in mapped
                   for t, table, i, column, target in m.pending}
        if not entries:
            return
        present = set()
        for chunk in _chunks(sorted({k[0] for k in entries})):
            present.update(conn.execute(select(PENDING.c.target_key, PENDING.c.cdm_table, PENDING.c.cdm_id,
                                               PENDING.c.column_name).where(PENDING.c.target_key.in_(chunk))).all())
        new = [{"target_key": k[0], "cdm_table": k[1], "cdm_id": k[2], "column_name": k[3], "target_table": target,
                "source_key": source, "recorded_at": now}
               for k, (target, source) in entries.items() if tuple(k) not in present]
        if new:
            conn.execute(insert(PENDING), new)
        self._pending = True

    def _resolve_pending(self, conn: Connection, mapped: list[Mapped]) -> int:
        """Fill the columns that waited for a resource of this batch (by key or identifier alias);
        returns how many."""
        provided = {(key, table): row_id for m in mapped for key, table, row_id in m.provides}
        provided.update({(alias, table): row_id for m in mapped for alias, table, row_id in m.aliases})
        if not provided:
            return 0
        found = []
        for chunk in _chunks(sorted({key for key, _table in provided})):
            found += conn.execute(select(PENDING).where(PENDING.c.target_key.in_(chunk))).mappings().all()
        return _fill(conn, [(p, provided[(p["target_key"], p["target_table"])]) for p in found
                            if (p["target_key"], p["target_table"]) in provided])

    def resolve_stored(self) -> int:
        """Fill every pending reference whose target the CDM holds now, whichever run wrote it.

        A batch fills the references that wait for its own resources; one that another process
        committed after that batch looked (or while this run ignored the empty table) is filled
        here, at the end of a run.  The target's row is the one ``source_record`` names for its key
        and table (the resource's own stable id when it wrote several; an Encounter kept as a
        sub-encounter gives its parent visit).  Returns how many were filled.
        """
        resolved = retry_conflicts(self._resolve_stored_once)  # its fills may meet a loading run's batch
        self.references_resolved += resolved
        return resolved

    def _resolve_stored_once(self) -> int:
        detail = tables["visit_detail"]
        as_parent = and_(PENDING.c.target_table == "visit_occurrence", SOURCE_RECORD.c.cdm_table == "visit_detail")
        with self.engine.begin() as conn:
            if conn.execute(select(PENDING.c.target_key).limit(1)).first() is None:
                return 0
            direct = conn.execute(select(PENDING, SOURCE_RECORD.c.cdm_id.label("row_id")).join(SOURCE_RECORD, and_(
                SOURCE_RECORD.c.source_key == PENDING.c.target_key,
                SOURCE_RECORD.c.cdm_table == PENDING.c.target_table))).mappings().all()
            parent = conn.execute(select(PENDING, detail.c.visit_occurrence_id.label("row_id"))
                                  .join(SOURCE_RECORD, and_(SOURCE_RECORD.c.source_key == PENDING.c.target_key, as_parent))
                                  .join(detail, detail.c.visit_detail_id == SOURCE_RECORD.c.cdm_id)).mappings().all()
            candidates: dict[tuple, tuple[dict, set[int]]] = {}
            for p in [*direct, *parent]:
                entry = candidates.setdefault(tuple(p[c] for c in PENDING_KEY), (p, set()))
                entry[1].add(p["row_id"])
            found = [(p, _main_row(p["target_key"], ids)) for p, ids in candidates.values()]
            return _fill(conn, found)

    def waiting(self) -> bool:
        """Whether any reference in the CDM waits for its target (this run's or another's)."""
        with self.engine.connect() as conn:
            return conn.execute(select(PENDING.c.target_key).limit(1)).first() is not None

    def open_references(self) -> dict[str, int]:
        """References still waiting for their target after this run, by target resource type."""
        if not self._pending:
            return {}
        with self.engine.connect() as conn:
            keys = conn.execute(select(PENDING.c.target_key)).scalars().all()
        return dict(sorted(Counter(_target_type(k) for k in keys).items()))

    def _clear_quarantine(self, conn: Connection, mapped: list[Mapped]) -> None:
        by_type: dict[str, set[str]] = {}
        by_file: dict[str, set[int]] = {}
        for item in mapped:
            _source, resource_type, resource_id = item.key.split("|", 2)
            by_type.setdefault(resource_type, set()).add(resource_id)
            if item.origin is not None:
                by_file.setdefault(item.origin[0], set()).add(item.origin[1])
        earlier = and_(QUARANTINE.c.ingest_kind == "fhir", QUARANTINE.c.quarantined_at < self.started)
        for resource_type, ids in by_type.items():
            for chunk in _chunks(sorted(ids)):
                conn.execute(delete(QUARANTINE).where(earlier, QUARANTINE.c.resource_type == resource_type,
                                                      QUARANTINE.c.resource_id.in_(chunk)))
        for source_file, numbers in by_file.items():
            for chunk in _chunks(sorted(numbers)):
                conn.execute(delete(QUARANTINE).where(earlier, QUARANTINE.c.source_file == source_file,
                                                      QUARANTINE.c.source_line.in_(chunk)))

    @staticmethod
    def _dedupe(mapped: list[Mapped]) -> dict[str, dict[int, dict]]:
        """Rows by table and key.  A row one resource writes twice keeps its last version; a row
        several resources write (a ctDNA draw's two results) is merged as if they came in separate
        batches (:func:`fills`), so the batch size does not change what is written."""
        out: dict[str, dict[int, dict]] = {}
        for item in mapped:
            own: set[tuple[str, int]] = set()
            for row in item.rows:
                table, values = row.table, row.values
                key = values[key_column(table)]
                by_key = out.get(table)
                if by_key is None:
                    by_key = out[table] = {}
                earlier = by_key.get(key)
                if earlier is None or (table, key) in own:
                    by_key[key] = values
                else:
                    by_key[key] = {**earlier, **fills(earlier, values)}
                own.add((table, key))
        return out

    def _insert_or_fill(self, conn: Connection, table_name: str, by_key: dict[int, dict]) -> None:
        table, column = tables[table_name], key_column(table_name)
        present: set[int] = set()
        keys = sorted(by_key)  # key order: two batches lock the rows they share in the same order
        probe = _present(table_name, conn.dialect.name)
        for chunk in _chunks(keys):
            present.update(conn.execute(probe, {"keys": chunk}).scalars())
        new = [by_key[key] for key in keys if key not in present]
        if new:
            bulk_insert(conn, table, new, _all_columns(table_name))
        for key in sorted(present):
            existing = conn.execute(select(table).where(table.c[column] == key).limit(1)).mappings().first()
            changes = fills(existing, by_key[key])
            changes.pop(column, None)
            if changes:
                conn.execute(update(table).where(table.c[column] == key).values(**changes))

    def _record(self, conn: Connection, mapped: list[Mapped], now: dt.datetime) -> int:
        records: dict[tuple[str, str, int], tuple] = {}  # (key, table, row id) -> its RECORD_COLUMNS
        aliases: dict[tuple[str, str, int], str] = {}
        for item in mapped:
            key, content_hash = item.key, item.content_hash
            for row in item.rows:
                table = row.table
                row_id = row.values[key_column(table)]
                records[(key, table, row_id)] = (key, table, row_id, content_hash, now)
            if not item.rows:
                records[(key, *NO_ROW)] = (key, *NO_ROW, content_hash, now)
            for alias_key, table_name, row_id in item.aliases:
                aliases.setdefault((alias_key, table_name, row_id), content_hash)
        if aliases:
            # First resource to claim an identifier keeps it (an identifier should name one resource).
            taken: set[str] = set()
            alias_keys = sorted({k for k, _t, _i in aliases})
            for chunk in _chunks(alias_keys):
                taken.update(conn.execute(select(SOURCE_RECORD.c.source_key)
                                          .where(SOURCE_RECORD.c.source_key.in_(chunk))).scalars())
            claimed: set[str] = set()
            for (alias_key, table_name, row_id), content_hash in aliases.items():
                if alias_key not in taken and alias_key not in claimed:
                    claimed.add(alias_key)
                    records[(alias_key, table_name, row_id)] = (alias_key, table_name, row_id, content_hash, now)
        if records:
            bulk_insert(conn, SOURCE_RECORD, list(records.values()), RECORD_COLUMNS)
        return len(records)


@lru_cache(maxsize=None)
def _present(table_name: str, dialect: str) -> Select:
    """Which of the ``keys`` rows ``table_name`` holds.  On SQLite the keys travel as one JSON array
    (``IN (SELECT value FROM json_each(:keys))``): an expanding parameter renders a placeholder per
    key at every execution (~3% of the loader's instructions).  Elsewhere one expanding parameter:
    SQLAlchemy compiles the statement once per list length instead of coercing every key of every batch."""
    table, column = tables[table_name], key_column(table_name)
    keys = bindparam("keys", type_=SQLITE_JSON) if dialect == "sqlite" else bindparam("keys", expanding=True)
    return select(table.c[column]).where(_among(table.c[column], dialect, keys))


def _among(column, dialect: str, keys):
    """``column IN keys``: on SQLite ``keys`` is one JSON array parameter read with ``json_each`` (an
    expanding parameter renders a placeholder per key at every execution); elsewhere the expanding
    parameter itself.  Shared by :func:`hash_lookup` and :func:`_present`."""
    if dialect == "sqlite":
        return column.in_(select(func.json_each(keys).table_valued("value").c.value))
    return column.in_(keys)


def fills(existing, new: dict) -> dict:
    """The values of ``new`` a row that already holds ``existing`` takes: those of the columns it
    left empty (``None`` or 0, OMOP's "no concept")."""
    return {c: v for c, v in new.items() if v is not None and existing.get(c) in (None, 0)}


#: The primary key of ``pending_reference``: one waiting column of one row.
PENDING_KEY = ("target_key", "cdm_table", "cdm_id", "column_name")


def _fill(conn: Connection, found: list[tuple[dict, int]]) -> int:
    """Fill the columns of the ``pending_reference`` rows ``found`` (each with the id its target
    resolved to) and delete exactly those rows: a row another process added meanwhile for the same
    target stays until someone fills it.  Returns how many were filled."""
    if not found:
        return 0
    conn.execute(delete(PENDING).where(*(PENDING.c[c] == bindparam(f"p_{c}") for c in PENDING_KEY)),
                 [{f"p_{c}": p[c] for c in PENDING_KEY} for p, _row_id in found])
    fills: dict[tuple[str, str], list[dict]] = {}
    for p, row_id in found:
        fills.setdefault((p["cdm_table"], p["column_name"]), []).append({"k": p["cdm_id"], "v": row_id})
    for (table_name, column), values in sorted(fills.items()):
        table = tables[table_name]
        key = table.c[key_column(table_name)]
        conn.execute(update(table).where(key == bindparam("k"), table.c[column].is_(None))
                     .values({column: bindparam("v")}), sorted(values, key=lambda v: v["k"]))
    return len(found)


def _main_row(target_key: str, row_ids: set[int]) -> int:
    """Of the rows a resource wrote to one table, the one a reference to it means: its own stable id
    (``fhir|Type|id`` -> ``stable_id("fhir", Type, id)``), else the smallest (an ImagingStudy's first
    series), as the engine's ``provides`` says for a resource it maps."""
    parts = target_key.split("|", 2)
    own = stable_id(*parts) if len(parts) == 3 and "?" not in parts[1] else None
    return own if own in row_ids else min(row_ids)


def _target_type(target_key: str) -> str:
    """``Practitioner`` of ``fhir|Practitioner|x`` and of ``fhir|Practitioner?identifier=...``."""
    if not target_key.startswith("fhir|"):
        return "Bundle entry"
    return target_key[5:].split("|", 1)[0].split("?", 1)[0]


def records_of(conn: Connection, key: str) -> list[tuple[str, int]]:
    """``(cdm_table, cdm_id)`` of every row one resource wrote (for tests and tools; a :data:`NO_ROW`
    record names none)."""
    return [tuple(r) for r in conn.execute(
        select(SOURCE_RECORD.c.cdm_table, SOURCE_RECORD.c.cdm_id)
        .where(SOURCE_RECORD.c.source_key == key, SOURCE_RECORD.c.cdm_table != NO_ROW[0])
        .order_by(SOURCE_RECORD.c.cdm_table))]
