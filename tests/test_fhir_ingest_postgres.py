"""FHIR ingest on PostgreSQL at scale: bulk COPY writes and the re-run's index look-up."""

from __future__ import annotations

from sqlalchemy import func, select

from node.ingest.engine import ingest_paths
from node.ingest.load import SOURCE_RECORD, hash_lookup, probe_index

SYNTHEA = "fhir/synthea-bulk-10"


def test_rerun_lookup_probes_the_source_record_primary_key(pg_cdm, shared_dir):
    first = ingest_paths(pg_cdm, [shared_dir / SYNTHEA], workers=0)
    with pg_cdm.connect() as conn:
        written = conn.execute(select(func.count()).select_from(SOURCE_RECORD)).scalar()
        keys = conn.execute(select(SOURCE_RECORD.c.source_key).distinct()
                            .order_by(SOURCE_RECORD.c.source_key).limit(500)).scalars().all()
    assert written > 5_000 and len(keys) == 500
    query = hash_lookup("postgresql", keys).compile(pg_cdm)
    with pg_cdm.begin() as conn:
        probe_index(conn)
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(query), query.params))
    assert "source_record_pkey" in plan and "Seq Scan" not in plan, plan
    again = ingest_paths(pg_cdm, [shared_dir / SYNTHEA], workers=0)  # the look-up answers every key
    assert again.total("unchanged") == first.total("loaded") + first.total("updated")
