"""Deterministic identifiers and random streams for the generator.

Everything is derived from (seed, site, patient, purpose) so that a patient's data do not depend on
the order patients are generated in, and the same seed gives byte-identical output.  DICOM UIDs use
the ``2.25`` root (PS3.5 §B.2: a UUID written as one decimal integer), which needs no registered
organisation root and stays under the 64-character UID limit.
"""

from __future__ import annotations

import hashlib
import uuid

import numpy as np


def _digest(*parts: object, size: int = 16) -> bytes:
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=size).digest()


def resource_id(*parts: object) -> str:
    """A FHIR id (RFC 4122 UUID text, version 4 bits set) from ``parts``."""
    return str(uuid.UUID(bytes=_digest("fhir", *parts), version=4))


def dicom_uid(*parts: object) -> str:
    """A ``2.25.<uuid-as-integer>`` UID from ``parts``."""
    return "2.25." + str(uuid.UUID(bytes=_digest("dicom", *parts), version=4).int)


def rng(seed: int, *parts: int | str) -> np.random.Generator:
    """An independent PCG64 stream for (seed, parts); strings are hashed to integers."""
    entropy = [int(seed)] + [p if isinstance(p, int) else int.from_bytes(_digest(p, size=8), "big") for p in parts]
    return np.random.default_rng(np.random.SeedSequence(entropy))
