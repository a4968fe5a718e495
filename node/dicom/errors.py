"""DICOM input that cannot be indexed: the stable reason codes it is quarantined under, and the
error that carries one (its own module so that reading an instance, :mod:`node.dicom.instance`, and
mapping a series, :mod:`node.dicom.mapping`, need not import each other)."""

from __future__ import annotations

from cdm.errors import RadfedError

# Stable reason codes for quarantined DICOM input.
NOT_DICOM = "NOT_DICOM"
CORRUPT_DICOM = "CORRUPT_DICOM"
MISSING_ATTRIBUTE = "MISSING_ATTRIBUTE"
UNKNOWN_PATIENT = "UNKNOWN_PATIENT"
MISSING_PIXEL_DATA = "MISSING_PIXEL_DATA"
SEG_REFERENCES_MISSING = "SEG_REFERENCES_MISSING"
FEATURE_FAILED = "FEATURE_FAILED"
TRUNCATED = "TRUNCATED"
UNDECODABLE_PIXELS = "UNDECODABLE_PIXELS"
DUPLICATE_SOP = "DUPLICATE_SOP"


class DicomInputError(RadfedError, ValueError):
    """Input that cannot be indexed: ``reason_code`` is stable, ``str()`` says what to fix."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code
