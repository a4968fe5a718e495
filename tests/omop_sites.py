"""OMOP CDMs as OHDSI sites run them, for the attach and export tests.

The tables are made the way OHDSI's DDL makes them — from the official specification, with its
INTEGER ids and no radfed extensions — in PostgreSQL schemas or a SQLite file, and filled from an
export's CSV files by the database's own bulk path (PostgreSQL ``COPY``; SQLite plain inserts of
the text as written).  Nothing of radfed's loading code is involved, so a test comparing radfed's
answers with pandas on the same CSVs checks radfed's reading, not its own writing.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import zipfile
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import BigInteger, Column, Date, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine

from cdm.omop import field_specs, is_event_id, table_specs, v53_columns

SPEC_TYPES = {"integer": Integer, "float": Float, "date": Date, "datetime": DateTime, "varchar(max)": Text}


def unpack_eunomia(shared: Path, dest: Path) -> Path:
    """The Eunomia Synthea27Nj v5.4 export's CSV files in ``dest`` (upper-case names, comma-separated)."""
    with zipfile.ZipFile(shared / "omop" / "eunomia" / "Synthea27Nj_5.4.zip") as archive:
        for member in archive.namelist():
            if not member.startswith("__MACOSX") and member.endswith(".csv"):
                (dest / Path(member).name).write_bytes(archive.read(member))
    return dest


def ohdsi_tables(cdm_schema: str | None = None, vocab_schema: str | None = None, version: str = "5.4",
                 skip: tuple[str, ...] = (), big_ids: bool = False) -> MetaData:
    """The OMOP tables as OHDSI's DDL declares them (INTEGER ids; ``big_ids``: BIGINT event ids, as
    OHDSI's DDL generators offer large sites), each in its specification schema."""
    metadata = MetaData()
    for name, table in table_specs().items():
        names = dict(v53_columns(name) or []) if version == "5.3" else None
        if name in skip or (names is not None and not names):
            continue
        columns = []
        for f in field_specs():
            if f.table != name or (names is not None and f.name not in names):
                continue
            kind = SPEC_TYPES.get(f.datatype) or String(int(f.datatype[8:-1]))
            if big_ids and f.datatype == "integer" and is_event_id(f):
                kind = BigInteger
            columns.append(Column(names[f.name] if names else f.name, kind, nullable=not f.required))
        schema = vocab_schema if table.schema == "VOCAB" else cdm_schema
        Table(name, metadata, *columns, schema=schema)
    return metadata


def load_postgresql(url: str, folder: Path, cdm_schema: str, vocab_schema: str, version: str = "5.4",
                    skip: tuple[str, ...] = (), big_ids: bool = False) -> None:
    """Create the schemas and OHDSI-style tables and ``COPY`` every CSV of ``folder`` into them."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    metadata = ohdsi_tables(cdm_schema, vocab_schema, version, skip, big_ids)
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in {cdm_schema, vocab_schema}:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    metadata.create_all(engine)
    engine.dispose()
    with psycopg.connect(url) as conn:
        for table in metadata.tables.values():
            path = folder / f"{table.name.upper()}.csv"
            if not path.exists():
                continue
            header, rows = _rows(table, path)
            copy = sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT csv)").format(
                sql.Identifier(table.schema), sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, header)))
            with conn.cursor().copy(copy) as copier:
                out = io.StringIO()
                csv.writer(out).writerows(rows)
                copier.write(out.getvalue())


def _rows(table: Table, path: Path) -> tuple[list[str], list[list[str]]]:
    """The CSV's columns that ``table`` has (a v5.4 export read into a v5.3 table loses the new ones,
    renamed ones take their v5.3 names) and its rows restricted to them."""
    renamed = {new: old for new, old in v53_columns(table.name) or []}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [renamed.get(h, h) for h in next(reader)]
        keep = [i for i, h in enumerate(header) if h in table.c]
        return [header[i] for i in keep], [[row[i] for i in keep] for row in reader]


def load_sqlite(path: Path, folder: Path, version: str = "5.4", skip: tuple[str, ...] = ()) -> None:
    """An OHDSI-style SQLite CDM file from ``folder``'s CSVs, values stored as the text written
    (empty -> NULL), as OHDSI's SQLite loaders do."""
    engine = create_engine(f"sqlite:///{path}")
    metadata = ohdsi_tables(version=version, skip=skip)
    metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    for table in metadata.tables.values():
        csv_path = folder / f"{table.name.upper()}.csv"
        if not csv_path.exists():
            continue
        header, rows = _rows(table, csv_path)
        marks = ", ".join("?" for _ in header)
        conn.executemany(f"INSERT INTO {table.name} ({', '.join(header)}) VALUES ({marks})",
                         ([v if v != "" else None for v in row] for row in rows))
    conn.commit()
    conn.close()


def export_csv(engine, folder: Path, table_names) -> Path:
    """``table_names`` of a CDM as an OMOP CSV export (upper-case names, ISO dates, empty = NULL), the way
    OHDSI tools dump a CDM."""
    from sqlalchemy import select

    from cdm.schema import tables

    folder.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        for name in table_names:
            table = tables[name]
            with open(folder / f"{name.upper()}.csv", "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(table.c.keys())
                for row in conn.execute(select(table)):
                    writer.writerow(["" if v is None else v.isoformat(sep=" ") if hasattr(v, "hour")
                                     else v.isoformat() if hasattr(v, "isoformat") else repr(v) if isinstance(v, float)
                                     else v for v in row])
    return folder
