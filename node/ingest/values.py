"""Reading FHIR R4 primitive and general-purpose datatypes into CDM column values.

FHIR ``dateTime`` (R4 §2.24.0.1 primitive types) may be a year, a year-month, a date, or a date
with time and offset.  OMOP stores the *local* calendar date and a local datetime (CDM v5.4
conventions: "dates are local"), so an offset is dropped rather than converted: an encounter at
23:00-05:00 stays on its own day.  Partial dates take their first day (the FHIR-to-OMOP IG rule
for imprecise dates).  Shared by every mapper, so the same value always becomes the same date.
"""

from __future__ import annotations

import datetime as dt

from node.ingest.contract import Unmappable

#: Stable reason code for a resource without the date its CDM row requires.
MISSING_DATE = "MISSING_DATE"


def parse_datetime(value: str | None) -> tuple[dt.date, dt.datetime | None] | None:
    """``(date, datetime or None)`` of a FHIR date/dateTime/instant string, ``None`` when absent.

    A date without a time gives no datetime; ``2024`` and ``2024-05`` give 1 January / 1 May.
    Raises ``ValueError`` for a malformed value (validation has normally caught it already).
    """
    if not value:
        return None
    text = value.strip()
    if len(text) == 4:
        return dt.date(int(text), 1, 1), None
    if len(text) == 7:
        return dt.date(int(text[:4]), int(text[5:7]), 1), None
    if len(text) == 10:
        return dt.date.fromisoformat(text), None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    return moment.date(), moment


def first_datetime(*values: str | None) -> tuple[dt.date, dt.datetime | None] | None:
    """The first of ``values`` that is present, parsed (see :func:`parse_datetime`)."""
    for value in values:
        parsed = parse_datetime(value)
        if parsed is not None:
            return parsed
    return None


def required_datetime(resource: dict, *values: str | None, what: str) -> tuple[dt.date, dt.datetime | None]:
    """Like :func:`first_datetime`, but a resource with none of them is :class:`Unmappable`."""
    found = first_datetime(*values)
    if found is None:
        raise Unmappable(MISSING_DATE, f"{resource.get('resourceType')}/{resource.get('id')} has no {what}")
    return found


def period(value: dict | None) -> tuple[str | None, str | None]:
    """``(start, end)`` strings of a Period (either may be ``None``)."""
    value = value or {}
    return value.get("start"), value.get("end")


def reference(value: dict | None) -> str | None:
    """The ``reference`` string of a Reference, ``None`` when absent."""
    return (value or {}).get("reference") or None


def text_of(codeable: dict | None) -> str | None:
    """A short human text for a CodeableConcept: its text, else its first coding's display or code."""
    if not codeable:
        return None
    if codeable.get("text"):
        return codeable["text"]
    for coding in codeable.get("coding") or ():
        return coding.get("display") or coding.get("code")
    return None


def source_value(codeable: dict | None, limit: int = 50) -> str | None:
    """The ``*_source_value`` of a CodeableConcept: its first coding's code (OMOP keeps the verbatim code)."""
    if not codeable:
        return None
    for coding in codeable.get("coding") or ():
        if coding.get("code"):
            return str(coding["code"])[:limit]
    text = codeable.get("text")
    return text[:limit] if text else None


def first_code(codeable: dict | None, system: str | None = None) -> str | None:
    """The code of the first coding (of ``system``, when given)."""
    for coding in (codeable or {}).get("coding") or ():
        if system is None or coding.get("system") == system:
            return coding.get("code")
    return None


def clip(value, limit: int) -> str | None:
    """``value`` as a string cut to a column's width (OMOP source values are VARCHAR(50))."""
    if value is None or value == "":
        return None
    return str(value)[:limit]
