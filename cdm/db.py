"""Opening, creating and inspecting a CDM database.

A CDM is named by a SQLAlchemy URL (``postgresql://user@host/db``, ``sqlite:///path``) or, for the
embedded default, by a plain file path, which means SQLite.  Every failure to reach or recognise the
database becomes a :class:`CDMError` whose message says what was tried and what to check — never a
driver traceback.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from cdm.schema import OMOP_CDM_VERSION, SCHEMA_VERSION, SCHEMA_VERSION_KEY, metadata
from cdm.vocabulary import install_core_concepts

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


class CDMError(RuntimeError):
    """A CDM database cannot be opened, created or used as asked."""


def normalise_url(url_or_path: str | Path) -> str:
    """The SQLAlchemy URL for ``url_or_path``: a path means a SQLite file; PostgreSQL uses psycopg 3."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    scheme, rest = text.split("://", 1)
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the node agent read while an ingest writes; NORMAL is durable at checkpoints.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
    if url.get_backend_name() == "sqlite" and url.database:
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise CDMError(f"cannot create SQLite CDM {url.database!r}: folder {str(parent)!r} does not exist")
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError:
        raise CDMError(
            f"unsupported database {url.drivername!r} in {url.render_as_string(hide_password=True)!r}: "
            "use sqlite:///PATH (or a plain path) or postgresql://USER@HOST:PORT/DB"
        ) from None
    except (ArgumentError, SQLAlchemyError) as exc:
        raise CDMError(f"cannot use database URL {url.render_as_string(hide_password=True)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
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


def create_cdm(engine: Engine, source_name: str = "radfed node") -> None:
    """Create every CDM table that does not exist yet and record the schema version.

    Idempotent: on an existing CDM of the same version it changes nothing.  A CDM written by a
    different radfed schema version is refused (migrate it instead of mixing shapes).
    """
    existing = schema_version(engine)
    if existing is not None and existing != SCHEMA_VERSION:
        raise CDMError(f"CDM has radfed schema version {existing}, this release writes {SCHEMA_VERSION}: migrate it")
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
    """Drop every CDM table (the whole database's CDM content)."""
    metadata.drop_all(engine)


def schema_version(engine: Engine) -> int | None:
    """The radfed schema version recorded in the CDM, or ``None`` for a database without a CDM."""
    if not inspect(engine).has_table("metadata"):
        return None
    table = metadata.tables["metadata"]
    with engine.connect() as conn:
        value = conn.execute(
            select(table.c.value_as_number).where(table.c.name == SCHEMA_VERSION_KEY)
        ).scalar_one_or_none()
    return None if value is None else int(value)


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
    """Row count of every CDM table, in schema order."""
    if schema_version(engine) is None:
        raise CDMError("no radfed CDM in this database: run `radfed-node init` first")
    counts = {}
    with engine.connect() as conn:
        for name, table in metadata.tables.items():
            counts[name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
    return counts
