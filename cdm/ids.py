"""Deterministic identifiers.

Every CDM row id is derived from what identifies its source — (source system, resource type,
resource id[, part]) — so re-running an ingest writes the same ids and is idempotent, and two
resources never need a shared counter.  Ids are 62-bit: collision-free in practice at hospital
scale (birthday bound ~1e-7 for 1e6 rows per table) and positive in every SQL dialect's BIGINT.
"""

from functools import lru_cache
from hashlib import blake2b

_MASK = (1 << 62) - 1


_BLAKE2B_8 = blake2b(digest_size=8)  # copied for each id: cheaper than a new hash with its parameters


def _digest(parts: tuple) -> int:
    hashed = _BLAKE2B_8.copy()
    hashed.update("\x1f".join(map(str, parts)).encode("utf-8"))
    return (int.from_bytes(hashed.digest(), "big") & _MASK) or 1


# The FHIR ingest asks for the same ids again and again: a Patient's for every resource about it,
# a resource's own when its rows are remembered, so about half the calls repeat one made a few
# resources earlier.  A small memo answers them without hashing again; bounded, so its memory does
# not grow with the export.  ``typed``: 1, 1.0 and True are equal keys but different ids.
@lru_cache(maxsize=1 << 14, typed=True)
def _memo(*parts: object) -> int:
    return _digest(parts)


def stable_id(*parts: object) -> int:
    """A positive 62-bit id for the tuple ``parts`` (strings/ints), stable across runs and machines."""
    try:
        return _memo(*parts)
    except TypeError:  # an unhashable part (a list): the same id, without the memo
        return _digest(parts)
