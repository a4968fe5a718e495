"""``radfed-node ingest omop``: load an OMOP CDM export (CSV files) into the node's CDM.

An OMOP export is one CSV file per table, as OHDSI tools and ETLs write them (OHDSI's Eunomia,
``DatabaseConnector`` dumps, an ETL's output folder): upper- or lower-case names, comma- or
tab-separated, quoted fields, in a folder or a ``.zip`` (:mod:`cdm.omop_csv`).  Rows keep their
ids: the export's ``person_id`` 17 is this CDM's person 17, and every reference between its tables
(visits, ``measurement_event_id``, ``episode_event``, ``fact_relationship``) stays intact.

As with FHIR ingest, bad input never stops a load and is never dropped: a row that cannot be
loaded goes to the ``quarantine`` table (kind ``omop``) with a stable reason code, the file and
line it came from and the row itself:

=====================  ============================================================================
``BAD_VALUE``          a field is not of its column's type (a date that is not one, ``1.5`` as an id)
``MISSING_REQUIRED``   a column the specification requires is empty (or a key column is)
``FIELD_COUNT``        the line has more or fewer fields than the header
``DUPLICATE_KEY``      a second row with the same key in one file (the first one is loaded)
``ID_CONFLICT``        the id belongs to a row another source wrote (FHIR, DICOM), or a concept id
                       that this node already uses for a different code
``UNREADABLE_FILE``    a file's header cannot be read as the table's (the file is not loaded)
=====================  ============================================================================

Re-running is idempotent: each row is compared with the row of the same key already in the CDM
(its primary key, or :data:`NATURAL_KEYS` for the tables without one) and counted as **loaded**
(new), **updated** (changed: replaced) or **unchanged**.  A column the table does not have is
ignored and reported (the run exits PARTIAL); an OMOP v5.3 export loads under v5.4's names.
``cdm_source`` and ``metadata`` describe the exporting CDM, not this one: they are skipped.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, and_, bindparam, delete, exists, insert, select

from cdm.db import refresh_statistics
from cdm.errors import RadfedError
from cdm.omop import V53_RENAMED
from cdm.omop_csv import CsvFormatError, TableReader, converter, open_table, table_files
from cdm.schema import CLINICAL_TABLES, RESULTS_TABLES, VOCABULARY_TABLES, tables
from cdm.vocabulary import install_core_concepts
from node.ingest.summary import IngestSummary
from node.quarantine import QUARANTINE, quarantine

KIND = "omop"
BATCH = 20_000
CHUNK = 2_000  # bound parameters per IN list stay far below SQLite's and PostgreSQL's limits
#: Load order: the vocabulary first (a reader of the log sees concepts before the events using them).
LOAD_ORDER = VOCABULARY_TABLES + CLINICAL_TABLES + RESULTS_TABLES
#: Tables describing the exporting CDM itself: this CDM keeps its own.
NOT_LOADED = {"cdm_source": "describes the exporting CDM (this CDM keeps its own)",
              "metadata": "describes the exporting CDM (this CDM keeps its own)"}
#: The identity of a row in the OMOP tables that have no single-column primary key.
NATURAL_KEYS = {
    "death": ("person_id",),  # one death per person
    "fact_relationship": ("domain_concept_id_1", "fact_id_1", "domain_concept_id_2", "fact_id_2",
                          "relationship_concept_id"),
    "episode_event": ("episode_id", "event_id", "episode_event_field_concept_id"),
    "concept_relationship": ("concept_id_1", "concept_id_2", "relationship_id"),
    "concept_ancestor": ("ancestor_concept_id", "descendant_concept_id"),
    "concept_synonym": ("concept_id", "concept_synonym_name", "language_concept_id"),
    "drug_strength": ("drug_concept_id", "ingredient_concept_id"),
    "source_to_concept_map": ("source_vocabulary_id", "source_code", "target_concept_id", "valid_end_date"),
    "cohort": ("cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"),
    "cohort_definition": ("cohort_definition_id",),
}


@cache
def key_columns(table_name: str) -> tuple[str, ...]:
    primary = tuple(c.name for c in tables[table_name].primary_key.columns)
    return primary or NATURAL_KEYS[table_name]


@dataclass
class ExportSummary(IngestSummary):
    """:class:`node.ingest.summary.IngestSummary` counted in rows per table, plus ignored columns."""

    source: str = ""
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # file -> columns not loaded
    other_files: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.total("quarantined") or self.ignored_columns)

    def as_dict(self) -> dict:
        out = super().as_dict()
        for fhir_only in ("export_metadata_files", "observation_periods", "gave_up_waiting_for"):
            out.pop(fhir_only, None)
        out["rows"] = out.pop("resources")
        out["by_table"] = out.pop("by_type")
        return {"source": self.source, **out, "ignored_columns": self.ignored_columns,
                "files_not_loaded": self.other_files}

    def text(self) -> str:
        lines = [self.headline().replace(" resources,", " rows,")]
        if self.by_type:
            width = max(12, *(len(t) for t in self.by_type))
            states = ("loaded", "updated", "unchanged", "quarantined")
            lines.append(f"  {'table':<{width}} " + " ".join(f"{s:>11}" for s in states))
            for table, counts in self.by_type.items():
                lines.append(f"  {table:<{width}} " + " ".join(f"{counts[s]:>11,}" for s in states))
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n:,}: {reason}")
        for name, columns in sorted(self.ignored_columns.items()):
            lines.append(f"  {name}: column(s) {', '.join(columns)} not in the OMOP table, not loaded")
        if self.other_files:
            lines.append(f"  {len(self.other_files)} file(s) not named after an OMOP table, not read: "
                         + ", ".join(self.other_files[:5]) + (" ..." if len(self.other_files) > 5 else ""))
        if self.total("quarantined"):
            lines.append("  quarantined rows are in the quarantine table (kind omop), with file, line and reason")
        lines.append(f"  {self.seconds:.1f} s")
        return "\n".join(lines)


class _Rejected(RadfedError):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class _Row:
    line: int
    record: list[str]
    values: dict
    key: tuple  # parsed key values
    key_text: str  # the key as the file writes it (quarantine rows are found by it)


def ingest_export(engine: Engine, source: str | Path, progress=None) -> ExportSummary:
    """Load every OMOP table file in ``source`` (a folder or ``.zip``); the run's summary."""
    started = time.perf_counter()
    files, others = table_files(source, LOAD_ORDER)
    summary = ExportSummary(source=str(source), other_files=others)
    if not files:
        raise CsvFormatError(f"{str(source)!r} holds no OMOP table files (PERSON.csv, person.csv, ...)")
    loader = _Loader(engine, summary, str(source))
    for table_name in LOAD_ORDER:
        if table_name not in files:
            continue
        summary.files += 1
        if table_name in NOT_LOADED:
            summary.skipped[f"{files[table_name].name}: {NOT_LOADED[table_name]}"] += 1
            continue
        loader.load(files[table_name], progress)
    if loader.wrote_concepts:
        install_core_concepts(engine)  # an export's CONCEPT may have replaced a concept ingest relies on
    refresh_statistics(engine, loader.rows_written)
    summary.seconds = time.perf_counter() - started
    return summary


class _Loader:
    """Loads table files one batch (one transaction) at a time."""

    def __init__(self, engine: Engine, summary: ExportSummary, source: str):
        self.engine, self.summary, self.source = engine, summary, source
        self.started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.rows_written: Counter = Counter()
        self.wrote_concepts = False
        with engine.connect() as conn:  # most loads meet no earlier quarantine: then skip the clearing
            self.old_quarantine = conn.execute(select(QUARANTINE.c.quarantine_id).where(
                QUARANTINE.c.ingest_kind == KIND).limit(1)).first() is not None

    def load(self, file, progress) -> None:
        table = tables[file.table]
        where = f"{self.source}/{file.name}"
        counts = self.summary.by_type.setdefault(file.table, Counter())
        try:
            reader = open_table(file, table.c.keys())
        except CsvFormatError as exc:
            self._quarantine_file(where, file.table, str(exc), None)
            return
        try:
            columns = self._columns(reader, where)
            if columns is None:
                return
            with self.engine.connect() as conn:
                empty = not conn.execute(select(exists().select_from(table))).scalar()
            parse = self._parser(table, columns)
            batch: list[_Row] = []
            for line, record in reader.records():
                batch.append(parse(line, record))
                if len(batch) >= BATCH:
                    self._write(table, batch, where, empty, reader, columns)
                    batch = []
                    if progress:
                        progress(file.name, sum(counts.values()))
            if batch:
                self._write(table, batch, where, empty, reader, columns)
        except CsvFormatError as exc:
            self._quarantine_file(where, file.table, str(exc), None)
        finally:
            reader.close()

    def _columns(self, reader: TableReader, where: str) -> list[str | None] | None:
        """The table column of each field of the file (``None``: not loaded); ``None`` if unusable."""
        table_name = reader.file.table
        table = tables[table_name]
        renamed = {old: new for (t, new), old in V53_RENAMED.items() if t == table_name}
        columns = [renamed.get(h, h) if renamed.get(h, h) in table.c else None for h in reader.header]
        ignored = [h for h, c in zip(reader.header, columns) if c is None]
        if ignored:
            self.summary.ignored_columns[reader.file.name] = ignored
        missing = [c for c in key_columns(table_name) if c not in columns]
        if missing or len(set(filter(None, columns))) != len(list(filter(None, columns))):
            why = f"no column {', '.join(missing)}" if missing else "a column named twice"
            self._quarantine_file(where, table_name, f"{reader.file.name} ({reader.dialect.name}): {why} "
                                  f"(header: {', '.join(reader.header)[:300]})", reader.dialect.line(reader.header))
            return None
        return columns

    @staticmethod
    def _parser(table, columns: list[str | None]):
        """A function turning one record of this file into a :class:`_Row` or a :class:`_Rejected`
        (converters, key and required columns worked out once per file)."""
        fields = [(i, name, converter(table.c[name])) for i, name in enumerate(columns) if name is not None]
        template = dict.fromkeys(table.c.keys())
        required = [c.name for c in table.columns if not c.nullable]
        keys = key_columns(table.name)
        key_at = [columns.index(k) for k in keys]
        width = len(columns)
        seen: set[tuple] = set()

        def parse(line: int, record: list[str]) -> _Row | _Rejected:
            try:
                if len(record) != width:
                    raise _Rejected("FIELD_COUNT", f"{len(record)} fields, the header has {width}")
                values = template.copy()
                for i, name, convert in fields:
                    try:
                        values[name] = convert(record[i])
                    except ValueError as exc:
                        raise _Rejected("BAD_VALUE", str(exc)) from None
                empty = [c for c in required if values[c] is None]
                if empty:
                    raise _Rejected("MISSING_REQUIRED", f"required column(s) {', '.join(empty)} empty")
                key = tuple(values[k] for k in keys)
                if key in seen:
                    raise _Rejected("DUPLICATE_KEY", f"a second row with key {_key_text(key)} in this file")
                seen.add(key)
                return _Row(line, record, values, key, "|".join(record[i].strip() for i in key_at)[:255])
            except _Rejected as rejected:
                rejected.line, rejected.record = line, record
                return rejected

        return parse

    def _write(self, table, batch: list, where: str, empty: bool, reader: TableReader, columns) -> None:
        counts = self.summary.by_type[table.name]
        keys = key_columns(table.name)
        rows = [r for r in batch if isinstance(r, _Row)]
        rejected = [r for r in batch if isinstance(r, _Rejected)]
        with self.engine.begin() as conn:
            existing = {} if empty else _existing(conn, table, keys, [r.key for r in rows])
            # source_record names rows by integer id: only such keys can belong to another ingest
            by_id = len(keys) == 1 and table.c[keys[0]].type.python_type is int
            owned = self._owned_elsewhere(conn, table, list(existing) if by_id else [])
            new, changed = [], []
            for row in rows:
                old = existing.get(row.key)
                conflict = self._conflict(table.name, row, old, owned)
                if conflict:
                    conflict.line, conflict.record = row.line, row.record
                    rejected.append(conflict)
                elif old is None:
                    new.append(row)
                elif any(old.get(c) != v for c, v in row.values.items()):
                    changed.append(row)
                else:
                    counts["unchanged"] += 1
            if changed:
                _delete_rows(conn, table, keys, [r.key for r in changed])
            if new or changed:
                conn.execute(insert(table), [r.values for r in new + changed])
                self.rows_written[table.name] += len(new) + len(changed)
                self.wrote_concepts |= table.name == "concept"
            counts["loaded"] += len(new)
            counts["updated"] += len(changed)
            if self.old_quarantine and (new or changed):
                ids = sorted({r.key_text for r in new + changed})
                for chunk in _chunks(ids):
                    conn.execute(delete(QUARANTINE).where(
                        QUARANTINE.c.ingest_kind == KIND, QUARANTINE.c.quarantined_at < self.started,
                        QUARANTINE.c.resource_type == table.name, QUARANTINE.c.resource_id.in_(chunk)))
            for item in rejected:
                counts["quarantined"] += 1
                self.summary.quarantined[item.code] += 1
                quarantine(conn, KIND, item.code, f"{table.name}: {item.reason}", source_file=where,
                           source_line=item.line, resource_type=table.name,
                           resource_id=_raw_key(table.name, columns, item.record),
                           payload=reader.dialect.line(item.record))

    @staticmethod
    def _owned_elsewhere(conn, table, keys: list[tuple]) -> set[tuple]:
        """Keys of rows that another ingest (FHIR, DICOM) wrote: its ``source_record`` names them."""
        if not keys:
            return set()
        record = tables["source_record"]
        owned = set()
        for chunk in _chunks([k[0] for k in keys]):
            owned.update((i,) for i in conn.execute(select(record.c.cdm_id).where(
                record.c.cdm_table == table.name, record.c.cdm_id.in_(chunk))).scalars())
        return owned

    @staticmethod
    def _conflict(table_name: str, row: _Row, old: dict | None, owned: set) -> _Rejected | None:
        if old is None:
            return None
        if row.key in owned:
            return _Rejected("ID_CONFLICT", f"{table_name} id {_key_text(row.key)} belongs to a row another "
                                            "ingest (FHIR, DICOM) wrote; the export's row was not loaded")
        if table_name == "concept" and (old["vocabulary_id"], old["concept_code"]) != (
                row.values["vocabulary_id"], row.values["concept_code"]):
            return _Rejected("ID_CONFLICT", f"concept_id {row.key[0]} is {old['vocabulary_id']}:"
                                            f"{old['concept_code']} at this node, the export has "
                                            f"{row.values['vocabulary_id']}:{row.values['concept_code']}")
        return None

    def _quarantine_file(self, where: str, table_name: str, reason: str, payload: bytes | None) -> None:
        self.summary.by_type.setdefault(table_name, Counter())["quarantined"] += 1
        self.summary.quarantined["UNREADABLE_FILE"] += 1
        with self.engine.begin() as conn:
            quarantine(conn, KIND, "UNREADABLE_FILE", f"{reason}; the file was not loaded (it is still at "
                       f"{where})", source_file=where, resource_type=table_name, payload=payload)


def _existing(conn, table, keys: tuple[str, ...], wanted: list[tuple]) -> dict[tuple, dict]:
    """The rows of ``table`` with these keys.  Composite keys are looked up by their first column
    (which OMOP's and radfed's indexes lead with: ``concept_id_1``, ``ancestor_concept_id``) and
    matched here: a row-value ``IN`` list would scan the table once per chunk on SQLite."""
    found = {}
    wanted_set = set(wanted)
    for chunk in _chunks(sorted({k[0] for k in wanted})):
        for row in conn.execute(select(table).where(table.c[keys[0]].in_(chunk))).mappings():
            key = tuple(row[c] for c in keys)
            if key in wanted_set:
                found[key] = dict(row)
    return found


def _delete_rows(conn, table, keys: tuple[str, ...], doomed: list[tuple]) -> None:
    if len(keys) == 1:
        for chunk in _chunks(doomed):
            conn.execute(delete(table).where(table.c[keys[0]].in_([k[0] for k in chunk])))
        return
    match = and_(*(table.c[c] == bindparam(f"k_{c}") for c in keys))  # one indexed delete per row
    conn.execute(delete(table).where(match), [{f"k_{c}": v for c, v in zip(keys, k)} for k in doomed])


def _chunks(values: list, size: int = CHUNK):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _key_text(key: tuple) -> str:
    return "|".join("" if v is None else v.isoformat() if isinstance(v, dt.date) else str(v) for v in key)[:255]


def _raw_key(table_name: str, columns: list[str | None], record: list[str]) -> str | None:
    """A rejected row's key as the file writes it, if it has one (a later, fixed load clears it by this)."""
    fields = dict(zip(columns, record))
    raw = [fields.get(c) for c in key_columns(table_name)]
    return None if any(v in (None, "") for v in raw) else "|".join(v.strip() for v in raw)[:255]
