"""Reading FHIR R4 values into CDM column values: the one helpers module every mapper uses.

**Dates — one rule for every resource.**  FHIR ``date`` / ``dateTime`` / ``instant`` (R4 §2.24.0.1)
may be a year, a year-month, a date, or a date and time with a UTC offset.  OMOP keeps the *local*
calendar date and local clock time of an event (CDM v5.4 conventions), and the offset a source
writes is the local offset of the place that recorded it; so the offset is dropped, never converted:
``2024-03-01T23:30:00-05:00`` and ``2024-03-01T23:30:00+14:00`` both stay on 1 March at 23:30, and
an Observation keeps the day of the Encounter it was taken in, whatever offset the export uses.
Partial dates take their first day (the FHIR-to-OMOP IG rule for imprecise dates).  A malformed value
is :class:`~node.ingest.contract.Unmappable` ``BAD_DATE``; a resource without the date its row
requires is ``MISSING_DATE``.

Codes, references, numbers and text are read here too, so the same FHIR value always becomes the
same column value whichever mapper reads it.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

from cdm.vocabulary import project_concepts
from node.ingest.contract import Unmappable

#: OMOP Type Concept "EHR": the provenance of every row the FHIR ingest writes (unless a mapper says otherwise).
EHR = 32817
#: RADFED project concept code -> concept_id (cdm/data/radfed_concepts.csv).
RADFED_IDS = {r["concept_code"]: int(r["concept_id"]) for r in project_concepts()}

# Stable reason codes of Unmappable resources.
MISSING_DATE = "MISSING_DATE"
BAD_DATE = "BAD_DATE"
BAD_VALUE = "BAD_VALUE"
NO_CODE = "NO_CODE"

# FHIR R4 date/dateTime/instant (§2.24.0.1 regexes, seconds and offset optional as lenient readers do).
_DATE_TIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<offset>Z|[+-]\d{2}:\d{2})?)?)?)?"
)

When = tuple[dt.date, dt.datetime | None]


# -- dates ------------------------------------------------------------------------------------------

def parse_datetime(value: str | None) -> When | None:
    """``(local date, local datetime or None)`` of a FHIR date/dateTime/instant; ``None`` when absent.

    A date without a time gives no datetime; ``2024`` and ``2024-05`` give 1 January / 1 May.  The
    offset is dropped (the module's rule).  A malformed value raises ``Unmappable(BAD_DATE)``.
    """
    if value.__class__ is str:
        return _parse_text(value)
    return _parse_datetime(value)


def _parse_datetime(value: str | None) -> When | None:
    if value is None or value == "":
        return None
    text = value.strip() if isinstance(value, str) else None
    found = _DATE_TIME.fullmatch(text) if text else None
    if found is None:
        raise Unmappable(BAD_DATE, f"{value!r} is not a FHIR date/dateTime")
    part = found.groupdict()
    try:
        day = dt.date(int(part["year"]), int(part["month"] or 1), int(part["day"] or 1))
        if part["hour"] is None:
            return day, None
        moment = dt.datetime(day.year, day.month, day.day, int(part["hour"]), int(part["minute"]),
                             int(part["second"] or 0), int((part["fraction"] or "0")[:6].ljust(6, "0")))
    except ValueError:
        raise Unmappable(BAD_DATE, f"{value!r} is not a FHIR date/dateTime") from None
    return day, moment


# Most dates of an export repeat (an encounter's time on each of its observations): ~90 % of the
# values the 92k-resource synthetic export parses were parsed before.  The answers are immutable
# (date, datetime) pairs, so a bounded memo shares them; a malformed value raises and is not kept.
_parse_text = lru_cache(maxsize=1 << 13)(_parse_datetime)


def first_datetime(*values: str | None) -> When | None:
    """The first of ``values`` that is present, parsed (see :func:`parse_datetime`)."""
    for value in values:
        parsed = _parse_text(value) if value.__class__ is str else _parse_datetime(value)
        if parsed is not None:
            return parsed
    return None


def required_datetime(resource: dict, *values: str | None, what: str) -> When:
    """Like :func:`first_datetime`, but a resource with none of them is ``Unmappable(MISSING_DATE)``."""
    found = first_datetime(*values)
    if found is None:
        raise Unmappable(MISSING_DATE, f"{resource.get('resourceType')}/{resource.get('id')} has no {what}")
    return found


def effective(resource: dict) -> When:
    """When an Observation / DiagnosticReport applies: effective[x] (period start), else ``issued``."""
    start, end = period(resource.get("effectivePeriod"))
    return required_datetime(resource, resource.get("effectiveDateTime"), resource.get("effectiveInstant"),
                             start, end, resource.get("issued"), what="effective[x] or issued date")


def period(value: dict | None) -> tuple[str | None, str | None]:
    """``(start, end)`` strings of a Period (either may be ``None``)."""
    value = value or {}
    return value.get("start"), value.get("end")


# -- references -------------------------------------------------------------------------------------

def reference(value: dict | None) -> str | None:
    """The ``reference`` string of a Reference, ``None`` when absent."""
    return (value or {}).get("reference") or None


def part_of_procedure(resource: dict) -> str | None:
    """The reference of the Procedure an event is ``partOf`` (a biopsy, the sequencing of a variant)."""
    return next((p.get("reference") for p in resource.get("partOf") or ()
                 if (p.get("reference") or "").startswith(("Procedure/", "urn:uuid:"))), None)


def reference_id_part(value: dict | None) -> str | None:
    """The id of a ``Type/id`` (or ``urn:uuid:x``) reference."""
    ref = reference(value)
    if not ref:
        return None
    return ref.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


# -- codes ------------------------------------------------------------------------------------------

def codings(codeable: dict | None) -> list[dict]:
    """The codings of a CodeableConcept (empty when absent)."""
    return (codeable or {}).get("coding") or []


def code_keys(codeable: dict | None) -> list[tuple[str | None, str | None]]:
    """``(system, code)`` of every coding, in order."""
    return [(c.get("system"), c.get("code")) for c in (codeable or {}).get("coding") or ()]


def first_code(codeable: dict | None) -> str | None:
    """The first coding's code, else the concept's text."""
    codeable = codeable or {}
    for coding in codeable.get("coding") or ():
        if coding.get("code"):
            return coding["code"]
    return codeable.get("text")


def source_value(codeable: dict | None, limit: int = 50) -> str | None:
    """The ``*_source_value`` of a CodeableConcept: its first code (OMOP keeps the verbatim code), else its text."""
    found = first_code(codeable)
    return str(found)[:limit] if found else None


def text_of(codeable: dict | None) -> str | None:
    """A short human text for a CodeableConcept: its text, else its first coding's display or code."""
    if not codeable:
        return None
    if codeable.get("text"):
        return codeable["text"]
    for coding in codings(codeable):
        return coding.get("display") or coding.get("code")
    return None


def component_index(resource: dict) -> dict[tuple[str | None, str | None], dict]:
    """(system, code) -> the first component so coded."""
    out: dict = {}
    for comp in resource.get("component") or ():
        for c in (comp.get("code") or {}).get("coding") or ():  # code_keys(comp.get("code")), inlined
            out.setdefault((c.get("system"), c.get("code")), comp)
    return out


def component_string(comp: dict | None) -> str | None:
    """A component's value as text: valueString, else the first code/text of valueCodeableConcept."""
    if comp is None:
        return None
    if comp.get("valueString") is not None:
        return comp["valueString"]
    return first_code(comp.get("valueCodeableConcept"))


# -- numbers and text -------------------------------------------------------------------------------

def number(value, what: str) -> float:
    """A JSON number as float; anything else (a boolean, a string) is ``Unmappable(BAD_VALUE)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unmappable(BAD_VALUE, f"{what} {value!r} is not a number")
    return float(value)


def clip(value, limit: int) -> str | None:
    """``value`` as a string cut to a column's width (OMOP source values are VARCHAR(50))."""
    if value is None or value == "":
        return None
    return str(value)[:limit]
