"""Opening, creating and inspecting a CDM database.

A CDM is named by a SQLAlchemy URL (``postgresql://user@host/db``, ``sqlite:///path``) or, for the
embedded default, by a plain file path, which means SQLite.  Every failure to reach or recognise the
database becomes a :class:`CDMError` whose message says what was tried and what to check — never a
driver traceback.

Two kinds of CDM:

* **radfed's own** (``radfed-node init``): every table, OMOP and extension, in one database.
* **attached** (``radfed-node attach``, :mod:`cdm.attach`): a site's existing OMOP CDM read in place.
  The URL names where its tables are, with the names OHDSI tools use for the same settings::

      postgresql://radfed@omop-db/omop?cdm_schema=cdm&vocabulary_schema=vocab&radfed_schema=radfed
      sqlite:////var/radfed/radfed.sqlite?cdm_file=/data/omop/cdm.sqlite

  radfed's own tables (extensions, quarantine, source records, the attachment record) live in
  ``radfed_schema`` (default ``radfed``) or, on SQLite, in the URL's own file, with the CDM file
  attached read-only.  Every connection resolves unqualified table names through radfed's schema,
  then the CDM's, then the vocabulary's (PostgreSQL ``search_path``; SQLite ``ATTACH``, whose
  names resolve main first), so the query compiler reads an attached CDM exactly as it reads its
  own.  A guard on the engine refuses any write to an OMOP table of an attached CDM.
"""

from __future__ import annotations

import datetime as dt
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column, DateTime, Engine, Integer, MetaData, String, Table, Text, cast, create_engine, event, func, insert,
    inspect, null, select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.schema import DDLElement
from sqlalchemy.sql.dml import UpdateBase

from cdm.errors import EXIT_USAGE, RadfedError
from cdm.omop import V53_RENAMED, V54_ADDED, v53_columns
from cdm.schema import OMOP_CDM_VERSION, OMOP_TABLES, SCHEMA_VERSION, SCHEMA_VERSION_KEY, metadata
from cdm.vocabulary import install_core_concepts

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


class CDMError(RadfedError, RuntimeError):
    """A CDM database cannot be opened, created or used as asked."""

    exit_code = EXIT_USAGE


def normalise_url(url_or_path: str | Path) -> str:
    """The SQLAlchemy URL for ``url_or_path``: a path means a SQLite file; PostgreSQL uses psycopg 3."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    scheme, rest = text.split("://", 1)
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the node agent read while an ingest writes; NORMAL is durable at checkpoints.  The
    # journal mode is stored in the file, so it is chosen when radfed creates the file (still empty)
    # and never changed on a file someone else made (an OMOP CDM that `init` refuses, say).
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal" \
            and cursor.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None:
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# -- where an attached CDM's tables are -------------------------------------------------------------

_PG_KEYS = ("cdm_schema", "vocabulary_schema", "radfed_schema")
_SQLITE_KEYS = ("cdm_file", "vocabulary_file")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Layout:
    """Where an attached CDM's tables are: schema names as SQL sees them (on SQLite the aliases the
    CDM files are attached under) and, on SQLite, the files."""

    cdm_schema: str
    vocabulary_schema: str
    radfed_schema: str  # PostgreSQL: the schema radfed owns; SQLite: "main", the URL's own file
    cdm_file: str | None = None
    vocabulary_file: str | None = None

    @property
    def search_path(self) -> list[str]:
        return list(dict.fromkeys((self.radfed_schema, self.cdm_schema, self.vocabulary_schema)))

    def describe(self) -> str:
        if self.cdm_file:
            vocab = f", vocabulary in {self.vocabulary_file}" if self.vocabulary_file else ""
            return f"OMOP CDM file {self.cdm_file}{vocab} (read-only), radfed's tables in this file"
        vocab = f", vocabulary in schema {self.vocabulary_schema}" if self.vocabulary_schema != self.cdm_schema else ""
        return f"OMOP CDM in schema {self.cdm_schema}{vocab} (read-only), radfed's tables in schema {self.radfed_schema}"


def _split_layout(url: URL) -> tuple[URL, Layout | None]:
    """``url`` without radfed's layout keys, and the :class:`Layout` they describe (``None``: own CDM)."""
    given = {k: v for k, v in url.query.items() if k in _PG_KEYS + _SQLITE_KEYS}
    if not given:
        return url, None
    bad = [k for k, v in given.items() if not isinstance(v, str) or not v]
    if bad:
        raise CDMError(f"database URL: give {bad[0]} once, with a value")
    url = url.difference_update_query(list(given))
    backend = url.get_backend_name()
    keys = _PG_KEYS if backend == "postgresql" else _SQLITE_KEYS if backend == "sqlite" else ()
    wrong = sorted(set(given) - set(keys))
    if wrong:
        raise CDMError(f"database URL: {', '.join(wrong)} does not apply to {backend} "
                       f"(PostgreSQL takes {', '.join(_PG_KEYS)}; SQLite takes {', '.join(_SQLITE_KEYS)})")
    if backend == "postgresql":
        if "cdm_schema" not in given:
            raise CDMError("database URL: an attached PostgreSQL CDM needs cdm_schema=SCHEMA")
        cdm = given["cdm_schema"]
        layout = Layout(cdm, given.get("vocabulary_schema", cdm), given.get("radfed_schema", "radfed"))
        for name in {layout.cdm_schema, layout.vocabulary_schema, layout.radfed_schema}:
            if not _SCHEMA_NAME.match(name):
                raise CDMError(f"database URL: schema name {name!r} must be lower-case letters, digits and _")
        if layout.radfed_schema in (layout.cdm_schema, layout.vocabulary_schema):
            raise CDMError(f"database URL: radfed_schema must be a schema of radfed's own, not the CDM's "
                           f"({layout.radfed_schema!r}): radfed never writes into the site's CDM")
        return url, layout
    if "cdm_file" not in given:
        raise CDMError("database URL: an attached SQLite CDM needs cdm_file=PATH")
    files = {k: str(Path(given[k]).expanduser().resolve()) for k in _SQLITE_KEYS if k in given}
    for key, path in files.items():
        if not Path(path).is_file():
            raise CDMError(f"database URL: {key} {path!r} does not exist")
        if url.database and Path(url.database).expanduser().resolve() == Path(path):
            raise CDMError(f"database URL: radfed's own file must not be the CDM file {path!r}: "
                           "radfed never writes into the site's CDM")
    vocab_file = files.get("vocabulary_file")
    if vocab_file == files["cdm_file"]:
        vocab_file = None
    return url, Layout("cdm", "vocab" if vocab_file else "cdm", "main", files["cdm_file"], vocab_file)


_layouts: "weakref.WeakKeyDictionary[Engine, Layout]" = weakref.WeakKeyDictionary()


def layout_of(engine) -> Layout | None:
    """The :class:`Layout` of an attached CDM's engine (or connection); ``None`` for radfed's own CDM."""
    return _layouts.get(getattr(engine, "engine", engine))


#: radfed's record of an attachment, in radfed's own schema or file (:mod:`cdm.attach` writes it).
attachment_metadata = MetaData()
ATTACHMENT = Table(
    "radfed_attachment", attachment_metadata,
    Column("schema_version", Integer, nullable=False),
    Column("cdm_version", String(10), nullable=False),  # 5.3 or 5.4, as checked at attach
    Column("cdm_schema", String(1000), nullable=False),
    Column("vocabulary_schema", String(1000), nullable=False),
    Column("cdm_source_name", String(255)),
    Column("stand_ins", Text, nullable=False),  # OMOP tables the CDM lacks: empty ones of radfed's
    Column("views", Text, nullable=False),  # v5.3 tables read through v5.4-shaped views
    Column("attached_at", DateTime, nullable=False),
)


def v53_view(name: str, schema: str):
    """A SELECT presenting OMOP v5.3 table ``schema.name`` with v5.4's columns: renamed columns under
    their v5.4 names, columns v5.3 lacks as typed NULLs (views of radfed's; the CDM is not changed)."""
    columns = dict(v53_columns(name))
    source = Table(name, MetaData(), *(Column(old, metadata.tables[name].c[new].type)
                                       for new, old in columns.items()), schema=schema)
    return select(*(source.c[columns[c.name]].label(c.name) if c.name in columns
                    else cast(null(), c.type).label(c.name) for c in metadata.tables[name].columns))


#: v5.4 tables an OMOP v5.3 CDM has under other column names or without some columns
V53_VIEWS = tuple(sorted({t for t, _ in V53_RENAMED} | {t for t, cols in V54_ADDED.items() if cols}))


def _attach_sqlite(layout: Layout):
    """A connect hook: attach the CDM (and vocabulary) files read-only, and for an OMOP v5.3 CDM the
    v5.4-shaped TEMP views (SQLite views in a file cannot read another file)."""
    from sqlalchemy.dialects import sqlite

    def hook(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        for alias, path in (("cdm", layout.cdm_file), ("vocab", layout.vocabulary_file)):
            if path:
                cursor.execute(f"ATTACH DATABASE ? AS {alias}", (Path(path).as_uri() + "?mode=ro",))
        attached = {row[1]: row[2] for row in cursor.execute("PRAGMA database_list")}
        if attached.get("cdm") != layout.cdm_file:  # a SQLite built without URI file names
            raise CDMError(f"SQLite could not attach {layout.cdm_file!r} read-only")
        row = None
        if cursor.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'radfed_attachment'").fetchone():
            row = cursor.execute("SELECT cdm_version, views FROM main.radfed_attachment").fetchone()
        if row and row[1]:
            for name in row[1].split(","):
                view = v53_view(name, "cdm").compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
                cursor.execute(f'CREATE TEMP VIEW IF NOT EXISTS "{name}" AS {view}')
        cursor.close()

    return hook


def _read_only_guard(conn, clause, _multiparams, _params, execution_options) -> None:
    """Refuse writes and DDL on the OMOP tables of an attached CDM (radfed's own tables stay writable)."""
    if execution_options.get("radfed_cdm_ddl"):  # cdm.attach: stand-ins and indexes the administrator asked for
        return
    table = None
    if isinstance(clause, UpdateBase):
        table = clause.table
    elif isinstance(clause, DDLElement):
        target = getattr(clause, "element", None)
        table = getattr(target, "table", target)
    name = getattr(table, "name", None)
    if name in OMOP_TABLES:
        raise CDMError(f"refused to write OMOP table {name}: this node serves an attached OMOP CDM, "
                       f"which radfed reads and never writes ({layout_of(conn.engine).describe()})")


def open_engine(url_or_path: str | Path, check: bool = True) -> Engine:
    """An :class:`~sqlalchemy.Engine` for the CDM at ``url_or_path``.

    With ``check`` the database is contacted once, so a wrong host, port, password or database name
    fails here with a :class:`CDMError` rather than later inside an ingest.
    """
    url_text = normalise_url(url_or_path)
    try:
        url = make_url(url_text)
    except ArgumentError as exc:
        raise CDMError(f"not a database URL or path: {str(url_or_path)!r} ({exc})") from None
    url, layout = _split_layout(url)
    if url.get_backend_name() == "sqlite" and url.database:
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise CDMError(f"cannot create SQLite CDM {url.database!r}: folder {str(parent)!r} does not exist")
    connect_args = {}
    if layout is not None and url.get_backend_name() == "postgresql":
        # at connection start, so no transaction and no pool reset can undo it
        options = url.query.get("options", "")
        connect_args["options"] = f"{options} -c search_path={','.join(layout.search_path)}".strip()
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError:
        raise CDMError(
            f"unsupported database {url.drivername!r} in {url.render_as_string(hide_password=True)!r}: "
            "use sqlite:///PATH (or a plain path) or postgresql://USER@HOST:PORT/DB"
        ) from None
    except (ArgumentError, SQLAlchemyError) as exc:
        raise CDMError(f"cannot use database URL {url.render_as_string(hide_password=True)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if layout is not None:
            event.listen(engine, "connect", _attach_sqlite(layout))
    if layout is not None:
        _layouts[engine] = layout
        event.listen(engine, "before_execute", _read_only_guard)
    if check:
        try:
            with engine.connect():
                pass
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise CDMError(
                f"cannot connect to CDM database {url.render_as_string(hide_password=True)!r}: {reason}"
            ) from None
    return engine


def with_layout(url_or_path: str | Path, params: dict[str, str]) -> str:
    """``url_or_path`` with attached-CDM layout keys added (``cdm_schema``, ``cdm_file``...)."""
    if not params:
        return str(url_or_path)
    return make_url(normalise_url(url_or_path)).update_query_dict(params).render_as_string(hide_password=False)


def display_url(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


# -- radfed's own CDM -------------------------------------------------------------------------------


def _foreign_omop_tables(engine: Engine) -> list[str]:
    """OMOP tables already in the database that radfed did not create (a site's existing CDM), if any.

    An interrupted ``init`` leaves radfed's own, empty tables, which a new ``init`` completes; a
    table of another shape, or a ``person`` table with rows, is someone else's CDM."""
    inspector = inspect(engine)
    present = [name for name in inspector.get_table_names() if name in OMOP_TABLES]
    if not present:
        return []
    for name in present:
        if [c["name"] for c in inspector.get_columns(name)] != list(metadata.tables[name].c.keys()):
            return present
    person_id = {c["name"]: c for c in inspector.get_columns("person")}.get("person_id") if "person" in present else None
    if person_id is not None and engine.dialect.name == "postgresql" and person_id["type"].python_type is int \
            and "BIG" not in str(person_id["type"]).upper():
        return present  # OHDSI's DDL (INTEGER ids): radfed's 63-bit ids would not fit
    if "person" in present:
        with engine.connect() as conn:
            if conn.execute(select(metadata.tables["person"].c.person_id).limit(1)).first() is not None:
                return present
    return []


def create_cdm(engine: Engine, source_name: str = "radfed node") -> None:
    """Create every CDM table that does not exist yet and record the schema version.

    Idempotent: on an existing CDM of the same version it changes nothing.  A CDM written by a
    different radfed schema version is refused (migrate it instead of mixing shapes), and so is a
    database that already holds an OMOP CDM radfed did not create — before anything is written.
    """
    if layout_of(engine) is not None:
        raise CDMError("this database URL names an attached OMOP CDM: use `radfed-node attach`, not init")
    existing = schema_version(engine)
    if existing is not None and existing != SCHEMA_VERSION:
        raise CDMError(f"CDM has radfed schema version {existing}, this release writes {SCHEMA_VERSION}: migrate it")
    if existing is None:
        foreign = _foreign_omop_tables(engine)
        if foreign:
            shown = ", ".join(sorted(foreign)[:6]) + (", ..." if len(foreign) > 6 else "")
            raise CDMError(
                f"{display_url(engine)} already holds an OMOP CDM that radfed did not create ({shown}); "
                "nothing was written.  To serve it in place, use `radfed-node attach` "
                "(docs/site-admin-guide.md, 'Sites that already run OMOP'); to import an OMOP export, "
                "`radfed-node init` an empty database and `radfed-node ingest omop DIR`")
    metadata.create_all(engine)
    install_core_concepts(engine)
    if existing is None:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        with engine.begin() as conn:
            conn.execute(
                insert(metadata.tables["metadata"]).values(
                    metadata_id=1,
                    metadata_concept_id=0,
                    metadata_type_concept_id=0,
                    name=SCHEMA_VERSION_KEY,
                    value_as_string=str(SCHEMA_VERSION),
                    value_as_number=SCHEMA_VERSION,
                    metadata_date=now.date(),
                    metadata_datetime=now,
                )
            )
            conn.execute(
                insert(metadata.tables["cdm_source"]).values(
                    cdm_source_name=source_name,
                    cdm_source_abbreviation=source_name[:25],
                    cdm_holder=source_name,
                    source_release_date=now.date(),
                    cdm_release_date=now.date(),
                    cdm_version=OMOP_CDM_VERSION,
                    cdm_version_concept_id=756265,  # OMOP CDM Version 5.4
                    vocabulary_version="radfed-local",
                )
            )


def drop_cdm(engine: Engine) -> None:
    """Drop every CDM table (the whole database's CDM content); never an attached CDM's."""
    if layout_of(engine) is not None:
        raise CDMError("refused to drop an attached OMOP CDM: radfed never writes it")
    metadata.drop_all(engine)


def _as_version(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def schema_version(engine: Engine) -> int | None:
    """The radfed schema version recorded in the CDM, or ``None`` for a database without a radfed CDM
    (an empty database, someone else's OMOP CDM, or a URL naming a CDM not attached yet)."""
    layout = layout_of(engine)
    if layout is not None:
        if not inspect(engine).has_table(ATTACHMENT.name, schema=layout.radfed_schema):
            return None
        with engine.connect() as conn:
            return _as_version(conn.execute(select(ATTACHMENT.c.schema_version)).scalar())
    if not inspect(engine).has_table("metadata"):
        return None
    table = metadata.tables["metadata"]
    with engine.connect() as conn:
        values = conn.execute(select(table.c.value_as_number).where(table.c.name == SCHEMA_VERSION_KEY)).scalars().all()
    return _as_version(values[0]) if len(values) == 1 else None


def require_cdm(engine: Engine) -> int:
    """The schema version of the radfed CDM at ``engine``; a :class:`CDMError` saying what to run if
    there is none (what every command that reads the CDM calls first)."""
    version = schema_version(engine)
    layout = layout_of(engine)
    if version is None:
        if layout is not None:
            raise CDMError(f"{layout.describe()}: not attached yet — run `radfed-node attach` first")
        raise CDMError("no radfed CDM in this database: run `radfed-node init` first (or `radfed-node attach` "
                       "to serve an existing OMOP CDM)")
    if layout is not None:
        with engine.connect() as conn:
            stand_ins = set(filter(None, (conn.execute(select(ATTACHMENT.c.stand_ins)).scalar() or "").split(",")))
        arrived = stand_ins & {n for s in {layout.cdm_schema, layout.vocabulary_schema}
                               for n in inspect(engine).get_table_names(schema=s)}
        if arrived:  # radfed's empty table of that name would hide the site's new one
            raise CDMError(f"the CDM now has {', '.join(sorted(arrived))}, which it lacked when attached: "
                           "run `radfed-node attach` again")
    return version


def require_writable_cdm(engine: Engine, command: str) -> int:
    """:func:`require_cdm`, and refuse ``command`` up front when it would write an attached CDM."""
    version = require_cdm(engine)
    layout = layout_of(engine)
    if layout is not None:
        raise CDMError(f"`{command}` writes OMOP tables, and this node serves an attached OMOP CDM read-only "
                       f"({layout.describe()}): load data through the site's own ETL")
    return version


#: rows a load must have written to a table before its planner statistics are refreshed
STATISTICS_MIN_ROWS = 1000


def refresh_statistics(engine: Engine, rows_written: dict[str, int]) -> list[str]:
    """Update the query planner's statistics of the tables a bulk load grew; the tables analysed.

    Why: the planner chooses index or scan, hash or nested loop, from row counts it last sampled.
    Right after a load those describe the empty tables, until autovacuum (PostgreSQL) gets round to
    them, or forever (SQLite keeps ``sqlite_stat1`` only when ANALYZE runs): on PostgreSQL a cohort
    query over 100k fresh persons nested-looped a variant semi-join for > 60 s, against ~0.1 s once
    analysed (benchmarks/README.md, query specs).  Tables with fewer than :data:`STATISTICS_MIN_ROWS`
    new rows are left alone.  Names come from the CDM metadata only.  Cost: 0.8 s after a
    71,000-resource load on PostgreSQL."""
    names = sorted(name for name, n in rows_written.items() if n >= STATISTICS_MIN_ROWS and name in metadata.tables)
    if not names or engine.dialect.name not in ("postgresql", "sqlite"):
        return []
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # PostgreSQL: no ANALYZE in a block
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA analysis_limit = 1000")  # sampled: bounded time on big tables
        for name in names:
            conn.exec_driver_sql(f"ANALYZE {quote(name)}")
    return names


def table_counts(engine: Engine) -> dict[str, int]:
    """Row count of every CDM table, in schema order (an attached CDM's tables where they are)."""
    require_cdm(engine)
    counts = {}
    with engine.connect() as conn:
        for name, table in metadata.tables.items():
            counts[name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
    return counts
