"""Deterministic identifiers.

Every CDM row id is derived from what identifies its source — (source system, resource type,
resource id[, part]) — so re-running an ingest writes the same ids and is idempotent, and two
resources never need a shared counter.  Ids are 62-bit: collision-free in practice at hospital
scale (birthday bound ~1e-7 for 1e6 rows per table) and positive in every SQL dialect's BIGINT.
"""

import hashlib

_MASK = (1 << 62) - 1


def stable_id(*parts: object) -> int:
    """A positive 62-bit id for the tuple ``parts`` (strings/ints), stable across runs and machines."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return (int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & _MASK) or 1
