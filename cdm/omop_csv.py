"""Reading OMOP tables from CSV files as OHDSI tools write them.

Two families, one reader:

* **Athena vocabulary downloads**: tab-separated, no quoting at all (a concept name may contain a
  ``"``), dates as ``YYYYMMDD``, upper-case file names (``CONCEPT.csv``).
* **CDM exports** (ETL outputs, Eunomia, ``DatabaseConnector``/``readr``/``pandas`` dumps):
  comma- or tab-separated, fields quoted where needed (RFC 4180), ISO dates, upper- or lower-case
  file names, sometimes ``NA``/``NULL``/``\\N`` for a missing number or date, a UTF-8 byte-order
  mark from spreadsheet tools.

The delimiter is detected from the header line: the candidate (tab, comma, semicolon, pipe) that
splits it into the most column names of the table wins, so a comma file handed to
``vocab load-athena`` loads instead of failing on one 200-character "column name".  A folder, or
a ``.zip`` of one (OHDSI distributes exports that way), is searched for files named after OMOP
tables, ``.csv``/``.tsv``/``.txt``, optionally gzip-compressed.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column

from cdm.errors import BadInput

DELIMITERS = ("\t", ",", ";", "|")
NULL_TOKENS = frozenset({"NA", "NULL", "null", "\\N", "NaN"})
_TABLE_FILE = re.compile(r"^(?P<table>[A-Za-z_][A-Za-z0-9_]*)\.(?:csv|tsv|txt)(?:\.gz)?$", re.IGNORECASE)


class CsvFormatError(BadInput, ValueError):
    """A file whose layout (header, delimiter, encoding) cannot be read as an OMOP table."""


@dataclass(frozen=True)
class TableFile:
    """One file holding an OMOP table: the table it is named after, its name as found, how to open it."""

    table: str
    name: str
    opener: Callable[[], io.BufferedIOBase]
    size: int

    def open_text(self) -> io.TextIOWrapper:
        raw = self.opener()
        if self.name.lower().endswith(".gz"):
            raw = gzip.GzipFile(fileobj=raw)
        return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def table_files(source: str | Path, known_tables) -> tuple[dict[str, TableFile], list[str]]:
    """The OMOP table files in a folder or ``.zip``: ``{table: file}`` for names in ``known_tables``
    (matched case-insensitively), and the names of the other files found (for the run's summary).

    Two files for one table (``person.csv`` and ``PERSON.csv``) are an error: which one is meant?"""
    source = Path(source)
    entries: list[tuple[str, Callable, int]] = []
    if source.is_file() and zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        for info in archive.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or any(p.startswith((".", "__MACOSX")) for p in parts):
                continue
            entries.append((info.filename, (lambda i=info: archive.open(i)), info.file_size))
    elif source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(source).parts):
                entries.append((str(path.relative_to(source)), (lambda p=path: open(p, "rb")), path.stat().st_size))
    else:
        raise CsvFormatError(f"{str(source)!r} is neither a folder nor a .zip of OMOP CSV files")
    known = {t.lower() for t in known_tables}
    found: dict[str, TableFile] = {}
    others: list[str] = []
    for name, opener, size in entries:
        match = _TABLE_FILE.match(Path(name).name)
        table = match.group("table").lower() if match else None
        if table not in known:
            others.append(name)
            continue
        if table in found:
            raise CsvFormatError(f"two files for OMOP table {table}: {found[table].name} and {name}")
        found[table] = TableFile(table, name, opener, size)
    return found, others


@dataclass(frozen=True)
class Dialect:
    delimiter: str
    quoted: bool  # RFC 4180 quoting; Athena's tab files have none (a lone " is part of the value)

    def reader(self, text) -> Iterator[list[str]]:
        if self.quoted:
            return csv.reader(text, delimiter=self.delimiter, quotechar='"', doublequote=True, strict=False)
        return csv.reader(text, delimiter=self.delimiter, quoting=csv.QUOTE_NONE)

    def line(self, record: list[str]) -> bytes:
        """A record written back in this dialect (what a quarantine row keeps of it)."""
        out = io.StringIO()
        quoting = csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE
        csv.writer(out, delimiter=self.delimiter, quoting=quoting, escapechar=None if self.quoted else "\\",
                   lineterminator="\n").writerow(record)
        return out.getvalue().encode("utf-8")

    @property
    def name(self) -> str:
        return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}[self.delimiter] + "-separated"


def sniff(header: str, columns) -> Dialect:
    """The dialect of a file whose first line is ``header``, for a table with ``columns``."""
    header = header.rstrip("\r\n")
    known = {c.lower() for c in columns}

    def score(delimiter: str) -> int:
        return sum(f.strip().strip('"').lower() in known for f in header.split(delimiter))

    best = max(DELIMITERS, key=lambda d: (score(d), header.count(d)))
    return Dialect(best, quoted=best != "\t" or header.lstrip().startswith('"'))


@dataclass
class TableReader:
    """A table file's header and its records, with the line each record starts on."""

    file: TableFile
    dialect: Dialect
    header: list[str]
    text: io.TextIOWrapper

    def records(self) -> Iterator[tuple[int, list[str]]]:
        reader = self.dialect.reader(self.text)
        line = 2
        try:
            for record in reader:
                if record:  # a blank line (often the last) holds no row
                    yield line, record
                line = reader.line_num + 2
        except UnicodeDecodeError as exc:
            raise CsvFormatError(f"{self.file.name} is not UTF-8 after line {line - 1} ({exc.reason}): "
                                 "export it as UTF-8") from None
        except csv.Error as exc:
            raise CsvFormatError(f"{self.file.name} line {line}: {exc}") from None

    def close(self) -> None:
        self.text.close()


def open_table(file: TableFile, columns) -> TableReader:
    """Open ``file`` of a table with ``columns``: detect its dialect and read the header (lower case)."""
    text = file.open_text()
    try:
        first = text.readline()
    except UnicodeDecodeError:
        text.close()
        raise CsvFormatError(f"{file.name} is not UTF-8: export it as UTF-8") from None
    if not first.strip():
        text.close()
        raise CsvFormatError(f"{file.name} is empty: an OMOP table file starts with a header line")
    dialect = sniff(first, columns)
    header = [h.strip().lower() for h in next(dialect.reader([first]))]
    return TableReader(file, dialect, header, text)


# -- values -----------------------------------------------------------------------------------------


def parse_date(raw: str) -> dt.date:
    """``YYYY-MM-DD`` (a time after it is ignored), ``YYYYMMDD`` (Athena) or ``YYYY/MM/DD``."""
    try:
        return dt.date.fromisoformat(raw)  # both ISO forms, at C speed
    except ValueError:
        if len(raw) == 8 and raw.isdigit():
            return dt.date(int(raw[0:4]), int(raw[4:6]), int(raw[6:8]))
        return dt.date.fromisoformat(raw[:10].replace("/", "-"))


def parse_datetime(raw: str) -> dt.datetime:
    """ISO 8601 with a space or ``T``; a time zone is converted to UTC (the CDM keeps naive UTC)."""
    if len(raw) <= 10:
        value = dt.datetime.combine(parse_date(raw), dt.time())
    else:
        value = dt.datetime.fromisoformat(raw.replace("/", "-").replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def parse_value(column: Column, raw: str):
    """The Python value of ``raw`` for ``column``; ``None`` for an empty field (and, in a column that
    is not text, for ``NA``/``NULL``/``\\N``).  Raises ``ValueError`` saying what is wrong."""
    return converter(column)(raw)


def converter(column: Column) -> Callable[[str], object]:
    """:func:`parse_value` for one column, as a function of the raw field (built once per file)."""
    python_type = column.type.python_type
    name = column.name
    if python_type is str:
        length = getattr(column.type, "length", None)

        def text(raw: str):
            if raw == "":
                return None
            if length is not None and len(raw) > length:
                raise ValueError(f"{name}: {len(raw)} characters, OMOP allows {length}")
            return raw
        return text
    parse = {int: _int, float: float, dt.datetime: parse_datetime, dt.date: parse_date}[python_type]
    kind = {int: "an integer", float: "a number", dt.date: "a date", dt.datetime: "a date-time"}[python_type]

    def typed(raw: str):
        if raw == "":
            return None
        try:
            return parse(raw)
        except (ValueError, OverflowError):
            raw = raw.strip()
            if raw in NULL_TOKENS or raw == "":
                return None
            try:
                return parse(raw)
            except (ValueError, OverflowError):
                raise ValueError(f"{name}: {raw[:40]!r} is not {kind}") from None
    return typed


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        number = float(raw)  # 1.0 from a tool that writes every number as a float
        if not number.is_integer():
            raise
        return int(number)
