"""Quarantine: bad input is kept, with its reason, and never stops a load.

Every ingest path (FHIR, DICOM, genomics, wearables) calls :func:`quarantine` for input it cannot
load: the bytes are stored in the CDM's ``quarantine`` table with a stable reason code, the file and
line it came from, so a site can fix and re-load it and nothing is silently dropped.  The id is
derived from (kind, file, line, resource id, reason code): quarantining the same bad input twice
keeps one row.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, delete, insert, select, func

from cdm.ids import stable_id
from cdm.schema import tables

QUARANTINE = tables["quarantine"]


def quarantine(conn: Connection, kind: str, reason_code: str, reason: str, *, source_file: str | None = None,
               source_line: int | None = None, resource_type: str | None = None, resource_id: str | None = None,
               payload: bytes | None = None) -> int:
    """Store one piece of bad input; returns its quarantine id.

    Where it came from (``source_file``, ``source_line``, ``resource_type``, ``resource_id``: each
    ``None`` when unknown) is part of its id with ``kind`` and ``reason_code``."""
    quarantine_id = stable_id("quarantine", kind, source_file, source_line, resource_type, resource_id, reason_code)
    conn.execute(delete(QUARANTINE).where(QUARANTINE.c.quarantine_id == quarantine_id))
    conn.execute(
        insert(QUARANTINE).values(
            quarantine_id=quarantine_id,
            ingest_kind=kind,
            source_file=source_file,
            source_line=source_line,
            resource_type=resource_type,
            resource_id=resource_id,
            reason_code=reason_code,
            reason=reason,
            payload=payload,
            quarantined_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        )
    )
    return quarantine_id


def quarantine_counts(conn: Connection, kind: str | None = None) -> dict[str, int]:
    """Quarantined items by reason code (of one ingest kind, or all)."""
    query = select(QUARANTINE.c.reason_code, func.count()).group_by(QUARANTINE.c.reason_code)
    if kind:
        query = query.where(QUARANTINE.c.ingest_kind == kind)
    return dict(conn.execute(query).all())
