"""Serving a site's existing OMOP CDM in place (``radfed-node attach``).

Hundreds of hospitals already run an OMOP CDM.  For them radfed reads that CDM where it is — on
PostgreSQL the clinical tables in one schema (often ``cdm``) and the vocabulary in the same or
another (often ``vocab``); on SQLite a CDM file — and never writes it.  Everything radfed writes
(its extension tables, quarantine, source records, the attachment record) goes to a schema or file
radfed owns; see :class:`cdm.db.Layout` for how a connection finds both.

:func:`inspect_cdm` only reads, and says whether the CDM can be attached: both schemas (files) are
there, the OMOP version is 5.3 or 5.4 (``cdm_source.cdm_version``, and the tables' columns agree),
every table it has carries the columns of that version with compatible types, no table radfed
owns would hide one of the site's, and which of the indexes radfed's queries use are missing.
:func:`attach_cdm` writes radfed's own tables only when that check passes, in one transaction:
a refusal writes nothing.  What the CDM lacks is filled in radfed's own schema, never in the CDM:

* an optional OMOP table the CDM does not have (the specification requires only PERSON and
  OBSERVATION_PERIOD; a v5.3 CDM has no EPISODE) becomes an empty table of radfed's, so queries
  that name it find no rows instead of failing;
* a v5.3 table whose columns v5.4 renamed or extended is read through a view of radfed's that
  shows it with the v5.4 columns (:func:`cdm.db.v53_view`).

Indexes on the CDM are the site's: :func:`attach_cdm` creates the missing ones only when asked
(``--create-indexes``), and reports any the database does not allow.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    Column, Date, DateTime, Engine, Float, Integer, MetaData, Numeric, String, Table, create_engine, delete,
    func, insert, inspect, select,
)
from sqlalchemy.engine.reflection import ObjectKind
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateSchema, DDLElement

from cdm.db import (
    ATTACHMENT, V53_VIEWS, CDMError, Layout, attachment_metadata, layout_of, open_engine, v53_view, with_layout,
)
from cdm.omop import field_specs, table_specs, v53_columns
from cdm.schema import OMOP_TABLES, SCHEMA_VERSION, VOCABULARY_TABLES, metadata

SUPPORTED_VERSIONS = ("5.3", "5.4")
#: Tables without which a database is not an OMOP CDM at all.
REQUIRED_TABLES = tuple(t.name for t in table_specs().values() if t.required) + ("concept",)
#: Tables radfed writes in an attached CDM: its extensions and bookkeeping, all in its own schema.
RADFED_TABLES = tuple(name for name in metadata.tables if name not in OMOP_TABLES)


class AttachRefused(CDMError):
    """The database cannot be attached as it is; :attr:`report` says everything that was found."""

    def __init__(self, report: "AttachReport"):
        self.report = report
        super().__init__(report.text())


@dataclass
class IndexAdvice:
    """An index radfed's queries use on a CDM table, and whether the CDM has it."""

    table: str
    columns: tuple[str, ...]
    name: str
    present: bool
    ddl: str
    created: bool = False
    error: str | None = None


@dataclass
class AttachReport:
    """What :func:`inspect_cdm` found (and :func:`attach_cdm` did)."""

    layout: Layout
    declared_version: str | None = None  # cdm_source.cdm_version as the site wrote it
    version: str | None = None  # 5.3 or 5.4 once checked
    source_name: str | None = None
    persons: int | None = None
    concepts: int | None = None
    problems: list[str] = field(default_factory=list)  # any problem refuses the attachment
    notes: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    indexes: list[IndexAdvice] = field(default_factory=list)
    attached: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "attached": self.attached, "layout": self.layout.describe(),
            "declared_version": self.declared_version, "version": self.version, "source_name": self.source_name,
            "persons": self.persons, "concepts": self.concepts, "problems": self.problems, "notes": self.notes,
            "stand_ins": self.stand_ins, "views": self.views,
            "indexes": [{"table": i.table, "columns": list(i.columns), "name": i.name, "present": i.present,
                         "created": i.created, "error": i.error, "ddl": i.ddl} for i in self.indexes],
        }

    def text(self) -> str:
        lines = [self.layout.describe()]
        if self.version:
            lines.append(f"OMOP CDM v{self.version}" + (f" ({self.source_name})" if self.source_name else "")
                         + (f": {self.persons:,} persons, {self.concepts:,} concepts" if self.persons is not None else ""))
        if self.problems:
            lines.append("cannot attach, nothing was written:")
            lines += [f"  - {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        if self.stand_ins:
            lines.append(f"empty tables of radfed's for OMOP tables the CDM lacks: {', '.join(self.stand_ins)}")
        if self.views:
            lines.append(f"v5.3 tables read through v5.4-shaped views of radfed's: {', '.join(self.views)}")
        missing = [i for i in self.indexes if not i.present]
        if missing:
            lines.append(f"indexes radfed's queries use that the CDM lacks ({len(missing)}):")
            for i in missing:
                state = "created" if i.created else f"not created: {i.error}" if i.error else "missing"
                lines.append(f"  {i.ddl};  -- {state}")
            if not any(i.created or i.error for i in missing):
                lines.append("  (queries work without them, slower on large tables; "
                             "`radfed-node attach --create-indexes` creates them where the database allows)")
        if self.attached:
            lines.append("attached: radfed reads this CDM in place and writes only its own tables")
        return "\n".join(lines)


# -- reading what is there --------------------------------------------------------------------------


def _version_of(text: str | None) -> str | None:
    """``5.4`` for ``v5.4``, ``5.4.1``, ``CDM v5.4.0``...; the major.minor as written otherwise."""
    if not text:
        return None
    found = re.search(r"(\d+)\.(\d+)", str(text))
    return f"{found.group(1)}.{found.group(2)}" if found else str(text).strip()[:20]


def expected_columns(version: str, table: str) -> list[str] | None:
    """The columns OMOP ``version`` gives ``table`` (``None``: that version has no such table)."""
    if version == "5.4":
        return [f.name for f in field_specs() if f.table == table]
    pairs = v53_columns(table)
    return None if pairs is None else [old for _new, old in pairs]


def _family_ok(datatype: str, reflected) -> bool:
    """Whether a reflected column type can hold what the specification's ``datatype`` says."""
    if datatype == "integer":
        return isinstance(reflected, (Integer, Numeric))
    if datatype == "float":
        return isinstance(reflected, (Numeric, Float, Integer))
    if datatype == "date":
        return isinstance(reflected, Date) and not isinstance(reflected, DateTime)
    if datatype == "datetime":
        return isinstance(reflected, (Date, DateTime))
    return isinstance(reflected, String)


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


class _Catalog:
    """Tables (and views) and their columns in the CDM's schemas, read once."""

    def __init__(self, conn, layout: Layout):
        inspector = inspect(conn)
        self.schemas = {layout.cdm_schema, layout.vocabulary_schema}
        self.names: dict[str, dict[str, str]] = {}  # schema -> lower-case name -> name as stored
        self.columns: dict[tuple[str, str], dict[str, object]] = {}
        known = set(inspector.get_schema_names())
        self.missing_schemas = sorted(self.schemas - known)
        for schema in sorted(self.schemas & known):
            names = inspector.get_table_names(schema=schema) + inspector.get_view_names(schema=schema)
            self.names[schema] = {n.lower(): n for n in names}
            for (_s, table), cols in inspector.get_multi_columns(schema=schema, kind=ObjectKind.ANY).items():
                self.columns[(schema, table)] = {c["name"]: c["type"] for c in cols}
        self.radfed_tables: set[str] = set()
        if layout.radfed_schema in known:
            self.radfed_tables = set(inspector.get_table_names(schema=layout.radfed_schema)
                                     + inspector.get_view_names(schema=layout.radfed_schema))
        self.indexes: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for schema in sorted(self.schemas & known):
            for (_s, table), found in inspector.get_multi_indexes(schema=schema).items():
                self.indexes[(schema, table)] = [tuple(i["column_names"]) for i in found]
            for (_s, table), pk in inspector.get_multi_pk_constraint(schema=schema).items():
                if pk.get("constrained_columns"):
                    self.indexes.setdefault((schema, table), []).append(tuple(pk["constrained_columns"]))

    def where(self, table: str) -> list[str]:
        """The schemas that have ``table`` (case-insensitively)."""
        return [s for s in sorted(self.names) if table in self.names[s]]


def _home(table: str, layout: Layout) -> str:
    return layout.vocabulary_schema if table in VOCABULARY_TABLES else layout.cdm_schema


def inspect_cdm(engine: Engine) -> AttachReport:
    """Everything :func:`attach_cdm` checks, without writing anything."""
    layout = layout_of(engine)
    if layout is None:
        raise CDMError("attach needs the CDM's schemas (PostgreSQL: cdm_schema=..., vocabulary_schema=...) "
                       "or file (SQLite: cdm_file=...)")
    report = AttachReport(layout)
    reader = engine
    if layout.cdm_file and not Path(engine.url.database or "").exists():
        # radfed's own file does not exist yet: read through an in-memory one, so that a refusal
        # leaves no file behind
        reader = open_engine(with_layout("sqlite://", {k: v for k, v in (
            ("cdm_file", layout.cdm_file), ("vocabulary_file", layout.vocabulary_file)) if v}), check=False)
    try:
        with reader.connect() as conn:
            _inspect(conn, layout, report)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        report.problems.append(f"the database could not be read: {reason}")
    finally:
        if reader is not engine:
            reader.dispose()
    return report


def _inspect(conn, layout: Layout, report: AttachReport) -> None:
    catalog = _Catalog(conn, layout)
    for schema in catalog.missing_schemas:
        report.problems.append(f"schema {schema!r} does not exist in this database")
    if catalog.missing_schemas:
        return
    _check_omop(catalog, layout, report)
    if report.problems:
        return
    _check_version(conn, catalog, layout, report)
    if report.problems:
        return
    _check_radfed_space(conn, catalog, layout, report)
    _check_dates(conn, catalog, layout, report)
    _advise_indexes(conn, catalog, layout, report)
    if not report.problems:
        person = Table("person", MetaData(), Column("person_id"), schema=layout.cdm_schema)
        concept = Table("concept", MetaData(), Column("concept_id"), schema=layout.vocabulary_schema)
        report.persons = conn.execute(select(func.count()).select_from(person)).scalar_one()
        report.concepts = conn.execute(select(func.count()).select_from(concept)).scalar_one()


def _check_omop(catalog: _Catalog, layout: Layout, report: AttachReport) -> None:
    """Required tables, where radfed will look for them, in lower case, each in one schema only."""
    for table in REQUIRED_TABLES:
        home = _home(table, layout)
        if table not in catalog.names.get(home, {}):
            elsewhere = [s for s in catalog.where(table) if s != home]
            hint = f" (it is in schema {elsewhere[0]!r})" if elsewhere else ""
            report.problems.append(f"not an OMOP CDM: no {table.upper()} table in {_place(home, layout)}{hint}")
    if report.problems:
        return
    for table in OMOP_TABLES:
        schemas = catalog.where(table)
        if len(schemas) > 1:
            report.problems.append(f"{table} is in both {schemas[0]!r} and {schemas[1]!r}: radfed would read "
                                   f"only {layout.search_path[1]!r}'s; drop one, or name one schema for both")
        for schema in schemas:
            if catalog.names[schema][table] != table:
                report.problems.append(f"table {schema}.{catalog.names[schema][table]} has an upper-case (quoted) "
                                       "name: OMOP table names are lower case")
    for table in RADFED_TABLES + (ATTACHMENT.name,):
        for schema in catalog.where(table):
            report.problems.append(
                f"{_place(schema, layout)} already has a table {table}: radfed's own table of that name would hide "
                f"it (an MI-CDM or G-CDM extension?); radfed cannot attach this CDM without renaming one of them")


def _place(schema: str, layout: Layout) -> str:
    if layout.cdm_file:
        return f"file {layout.vocabulary_file if schema == 'vocab' else layout.cdm_file}"
    return f"schema {schema!r}"


def _check_version(conn, catalog: _Catalog, layout: Layout, report: AttachReport) -> None:
    """The declared version (cdm_source) and the one the columns show must agree and be 5.3 or 5.4."""
    if "cdm_source" in catalog.names.get(layout.cdm_schema, {}):
        cols = catalog.columns.get((layout.cdm_schema, "cdm_source"), {})
        if "cdm_version" in cols:
            source = Table("cdm_source", MetaData(), Column("cdm_source_name"), Column("cdm_version"),
                           schema=layout.cdm_schema)
            row = conn.execute(select(source.c.cdm_source_name, source.c.cdm_version).limit(1)).first()
            if row is not None:
                report.source_name, report.declared_version = row[0], _version_of(row[1])
    declared = report.declared_version
    if declared is not None and declared not in SUPPORTED_VERSIONS:
        report.problems.append(f"OMOP CDM version {declared} (cdm_source.cdm_version) is not supported: "
                               f"radfed attaches v{' and v'.join(SUPPORTED_VERSIONS)}")
        return
    missing = {version: _missing_columns(catalog, layout, version) for version in SUPPORTED_VERSIONS}
    fits = [v for v in SUPPORTED_VERSIONS[::-1] if not missing[v]]
    if declared is None:
        if not fits:
            report.problems.append("the tables match neither OMOP v5.4 nor v5.3 (and cdm_source names no version); "
                                   "v5.4 columns missing: " + _listed(missing["5.4"]))
            return
        report.version = fits[0]
        report.notes.append(f"cdm_source names no version; the tables are OMOP v{report.version}'s")
    elif declared in fits:
        report.version = declared
    else:
        other = f" (they are v{fits[0]}'s: is cdm_source.cdm_version right?)" if fits else ""
        report.problems.append(f"cdm_source says OMOP v{declared}, but these columns are missing{other}: "
                               + _listed(missing[declared]))
        return
    for table in OMOP_TABLES:
        if not catalog.where(table):
            report.stand_ins.append(table)
    if report.version == "5.3":
        report.views = [t for t in V53_VIEWS if catalog.where(t)]
    for f in field_specs():
        schema = next(iter(catalog.where(f.table)), None)
        if schema is None or layout.cdm_file:  # SQLite declares affinities, not types: dates are sampled
            continue
        name = f.name if report.version == "5.4" else dict(v53_columns(f.table) or []).get(f.name)
        reflected = catalog.columns.get((schema, f.table), {}).get(name)
        if reflected is not None and not _family_ok(f.datatype, reflected):
            report.problems.append(f"{schema}.{f.table}.{name} is {reflected}, OMOP says {f.datatype}")


def _missing_columns(catalog: _Catalog, layout: Layout, version: str) -> list[str]:
    out = []
    for table in OMOP_TABLES:
        expected = expected_columns(version, table)
        schema = next(iter(catalog.where(table)), None)
        if schema is None or expected is None:
            continue
        have = {c.lower() for c in catalog.columns.get((schema, catalog.names[schema][table]), {})}
        out += [f"{table}.{c}" for c in expected if c not in have]
    return out


def _listed(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_radfed_space(conn, catalog: _Catalog, layout: Layout, report: AttachReport) -> None:
    """radfed's schema (file) holds nothing but radfed's tables, from an attachment of this CDM."""
    ours = set(RADFED_TABLES) | {ATTACHMENT.name} | set(OMOP_TABLES)
    if layout.cdm_file and any(t in OMOP_TABLES and t not in V53_VIEWS for t in catalog.radfed_tables) \
            and ATTACHMENT.name not in catalog.radfed_tables:
        report.problems.append("radfed's own file already holds a CDM of its own (`radfed-node init`): "
                               "give attach a new file")
        return
    strangers = sorted(catalog.radfed_tables - ours)
    if strangers:
        where = "radfed's own file" if layout.cdm_file else f"schema {layout.radfed_schema!r}"
        report.problems.append(f"{where} holds tables radfed did not create ({_listed(strangers)}): give radfed a schema "
                               "(file) of its own")
    if ATTACHMENT.name in catalog.radfed_tables:
        table = Table(ATTACHMENT.name, MetaData(), Column("cdm_schema"), Column("vocabulary_schema"),
                      schema=layout.radfed_schema)
        row = conn.execute(select(table.c.cdm_schema, table.c.vocabulary_schema)).first()
        if row is not None and tuple(row) != (_where(layout, "cdm"), _where(layout, "vocabulary")):
            report.problems.append(f"radfed's {('file' if layout.cdm_file else 'schema ' + repr(layout.radfed_schema))} "
                                   f"was attached to {row[0]} before: attach this CDM with a new one")


def _where(layout: Layout, which: str) -> str:
    """What the attachment record stores for the CDM's (vocabulary's) place."""
    if which == "cdm":
        return layout.cdm_file or layout.cdm_schema
    return layout.vocabulary_file or layout.cdm_file or layout.vocabulary_schema


def _check_dates(conn, catalog: _Catalog, layout: Layout, report: AttachReport) -> None:
    """On SQLite a column's declared type is only an affinity: sample one value of each required date
    column of the main event tables (first row: never a scan) and require ISO text, which is what the
    compiled queries' date arithmetic reads."""
    if not layout.cdm_file:
        return
    for f in field_specs():
        if f.datatype != "date" or not f.required or not catalog.where(f.table) or f.table in VOCABULARY_TABLES:
            continue
        table = Table(f.table, MetaData(), Column(f.name), schema=catalog.where(f.table)[0])
        value = conn.execute(select(func.typeof(table.c[f.name]), table.c[f.name]).limit(1)).first()
        if value is not None and not (value[0] == "text" and _ISO_DATE.match(value[1] or "")):
            report.problems.append(f"{f.table}.{f.name} holds {value[0]} values such as {value[1]!r}: radfed reads "
                                   "SQLite dates as ISO text (YYYY-MM-DD), as OHDSI's SQLite DDL writes them")
            return


def _advise_indexes(conn, catalog: _Catalog, layout: Layout, report: AttachReport) -> None:
    """The indexes :mod:`cdm.schema` gives OMOP tables (the ones radfed's queries use), present or not.

    An index counts as present when one of the CDM's indexes (or its primary key) starts with the same
    columns."""
    dialect = conn.dialect
    for table_name in OMOP_TABLES:
        schemas = catalog.where(table_name)
        if not schemas:
            continue
        existing = catalog.indexes.get((schemas[0], catalog.names[schemas[0]][table_name]), [])
        for index in sorted(metadata.tables[table_name].indexes, key=lambda i: i.name):
            columns = tuple(c.name for c in index.columns)
            present = any(tuple(c.lower() for c in have[:len(columns)]) == columns for have in existing)
            # SQLite: the statement runs on the CDM file itself (attached read-only here)
            placed = index if layout.cdm_file else _placed(index, schemas[0])
            ddl = str(CreateIndex(placed).compile(dialect=dialect))
            report.indexes.append(IndexAdvice(table_name, columns, index.name, present, ddl))


def _placed(index, schema: str):
    """``index`` on a copy of its table placed in ``schema`` (so its DDL names the schema)."""
    table = index.table.to_metadata(MetaData(), schema=schema)
    return next(i for i in table.indexes if i.name == index.name)


# -- writing radfed's own tables ----------------------------------------------------------------------


class CreateView(DDLElement):
    """``CREATE VIEW name AS select`` (SQLAlchemy Core has no view construct)."""

    inherit_cache = False

    def __init__(self, name: str, selectable, schema: str | None = None):
        self.name, self.selectable, self.schema = name, selectable, schema


@compiles(CreateView)
def _create_view(element, compiler, **kw):
    preparer = compiler.preparer
    name = preparer.quote(element.name)
    if element.schema:
        name = f"{preparer.quote_schema(element.schema)}.{name}"
    body = compiler.sql_compiler.process(element.selectable, literal_binds=True)
    return f"CREATE OR REPLACE VIEW {name} AS {body}"


def attach_cdm(engine: Engine, source_name: str = "radfed node", create_indexes: bool = False) -> AttachReport:
    """Check the CDM at ``engine`` (:func:`inspect_cdm`) and, if it passes, create radfed's own tables
    beside it in one transaction.  Raises :class:`AttachRefused` (nothing written) if it does not.

    Idempotent: attaching again re-checks, keeps radfed's own rows, replaces views and stand-ins."""
    report = inspect_cdm(engine)
    if not report.ok:
        raise AttachRefused(report)
    layout = report.layout
    tables = [metadata.tables[n] for n in RADFED_TABLES + tuple(report.stand_ins)]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    record = {"schema_version": SCHEMA_VERSION, "cdm_version": report.version,
              "cdm_schema": _where(layout, "cdm"), "vocabulary_schema": _where(layout, "vocabulary"),
              "cdm_source_name": (report.source_name or source_name)[:255], "stand_ins": ",".join(report.stand_ins),
              "views": ",".join(report.views), "attached_at": now}
    created_file = layout.cdm_file is not None and not Path(engine.url.database or "").exists()
    try:
        with engine.connect() as base:
            translate = {None: layout.radfed_schema} if not layout.cdm_file else None
            conn = base.execution_options(radfed_cdm_ddl=True, schema_translate_map=translate)
            with conn.begin():
                if layout.cdm_file:
                    conn.exec_driver_sql("BEGIN")  # pysqlite runs DDL outside a transaction otherwise
                elif layout.radfed_schema not in inspect(conn).get_schema_names():
                    # only when missing: a role may own its schema without the right to create schemas
                    conn.execute(CreateSchema(layout.radfed_schema))
                _drop_obsolete(conn, layout, report)
                metadata.create_all(conn, tables=tables)
                attachment_metadata.create_all(conn)
                if not layout.cdm_file:
                    for name in report.views:
                        conn.execute(CreateView(name, v53_view(name, layout.cdm_schema), layout.radfed_schema))
                conn.execute(delete(ATTACHMENT))
                conn.execute(insert(ATTACHMENT).values(**record))
    except SQLAlchemyError as exc:
        if created_file:
            engine.dispose()
            Path(engine.url.database).unlink(missing_ok=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CDMError(f"attaching failed, nothing was written: {reason}") from None
    engine.dispose()  # new connections set up the v5.3 views (SQLite) from the record just written
    report.attached = True
    if create_indexes:
        _create_indexes(engine, layout, report)
    return report


def _drop_obsolete(conn, layout: Layout, report: AttachReport) -> None:
    """Drop the stand-ins and views of an earlier attachment that this one no longer needs (the CDM
    gained the table): radfed's copy would otherwise hide the site's."""
    existing = set(inspect(conn).get_table_names(schema=None if layout.cdm_file else layout.radfed_schema))
    views = set(inspect(conn).get_view_names(schema=None if layout.cdm_file else layout.radfed_schema))
    for name in sorted((existing & set(OMOP_TABLES)) - set(report.stand_ins)):
        metadata.tables[name].drop(conn)
    for name in sorted(views & set(OMOP_TABLES)):
        conn.execute(_DropView(name, None if layout.cdm_file else layout.radfed_schema))


class _DropView(DDLElement):
    inherit_cache = False

    def __init__(self, name: str, schema: str | None):
        self.name, self.schema = name, schema


@compiles(_DropView)
def _drop_view(element, compiler, **kw):
    preparer = compiler.preparer
    name = preparer.quote(element.name)
    return f"DROP VIEW {preparer.quote_schema(element.schema)}.{name}" if element.schema else f"DROP VIEW {name}"


def _create_indexes(engine: Engine, layout: Layout, report: AttachReport) -> None:
    """Create the missing indexes on the CDM, each on its own (one the database refuses is reported)."""
    missing = [i for i in report.indexes if not i.present]
    if not missing:
        return
    if layout.cdm_file:
        # the CDM file is attached read-only: indexes go through a connection of their own, with no
        # pragmas (the site's journal mode stays as it is)
        targets = {"cdm": create_engine(f"sqlite:///{layout.cdm_file}"),
                   "vocab": create_engine(f"sqlite:///{layout.vocabulary_file}") if layout.vocabulary_file else None}
    for advice in missing:
        index = next(i for i in metadata.tables[advice.table].indexes if i.name == advice.name)
        schema = _home(advice.table, layout)
        try:
            if layout.cdm_file:
                with targets[schema].begin() as conn:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            else:
                with engine.connect() as base:
                    conn = base.execution_options(radfed_cdm_ddl=True, schema_translate_map={None: schema})
                    with conn.begin():
                        conn.execute(CreateIndex(index, if_not_exists=True))
            advice.created = True
        except SQLAlchemyError as exc:
            advice.error = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if layout.cdm_file:
        for target in targets.values():
            if target is not None:
                target.dispose()
