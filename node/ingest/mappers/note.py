"""Clinical notes -> OMOP ``note``: DocumentReference, and the ``presentedForm`` of a DiagnosticReport.

Radiology and pathology reports travel as text: a DocumentReference's ``content.attachment`` or a
DiagnosticReport's ``presentedForm`` (FHIR R4 Attachment: ``data`` base64, ``contentType``,
``language``, ``title``).  Each attachment is one ``note`` row, id ``row_id(type, id, "note", i)``:

* ``note_text``: the decoded text (``text/plain``; ``text/html`` and XML with their markup removed;
  the charset of ``contentType``, UTF-8 by default, undecodable bytes replaced).  An attachment
  that is not text (a PDF) or only a ``url`` keeps an empty text: the note still says a report of that
  type exists on that day, and ``note_title`` says what the attachment was;
* ``note_class_concept_id``: the document type (``DocumentReference.type``, the report's ``code``:
  LOINC document ontology, e.g. 18748-4 "Diagnostic imaging study"), ``note_source_value`` its code;
  ``note_type_concept_id`` 32817 "EHR"; ``encoding_concept_id`` 32678 "UTF-8";
  ``language_concept_id`` 4180186 "English" for ``en``/``en-*``, else 0;
* date: the clinical time (DocumentReference ``context.period.start``, else ``date``; a report's
  effective[x], else ``issued``), by the one date rule of :mod:`.values`;
* author (a Practitioner) -> ``provider_id``, the encounter -> ``visit_occurrence_id``;
* the imaging study a report is about (DiagnosticReport ``imagingStudy``, DocumentReference
  ``context.related``) -> ``note_event_id`` = the ``image_occurrence`` of its first series
  (``note_event_field_concept_id`` 0: the imaging extension has no field concept), filled in later
  when the ImagingStudy arrives after the report.
"""

from __future__ import annotations

import base64
import binascii
import html
import re

from node.ingest.contract import Row
from node.ingest.mappers.values import EHR, clip, effective, first_code, period, reference, required_datetime, text_of

UTF8 = 32678
ENGLISH = 4180186
_TEXT_TYPES = ("text/", "application/xhtml", "application/xml", "application/json")
_MARKUP = re.compile(r"<[^>]*>")
_CHARSET = re.compile(r"charset=([\w.\-]+)", re.IGNORECASE)
SKIPPED_STATUSES = frozenset({"entered-in-error"})


def attachment_text(attachment: dict) -> str:
    """The text of an Attachment ('' when it carries no text: a PDF, an image, only a url)."""
    data = attachment.get("data")
    content_type = (attachment.get("contentType") or "text/plain").lower()
    if not data or not content_type.startswith(_TEXT_TYPES):
        return ""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return ""
    charset = _CHARSET.search(content_type)
    try:
        text = raw.decode(charset.group(1) if charset else "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        text = raw.decode("utf-8", errors="replace")
    if "html" in content_type or "xml" in content_type:
        text = html.unescape(_MARKUP.sub(" ", text))
        text = re.sub(r"[ \t]+", " ", text)
    return text.strip()


def _language(attachment: dict) -> int:
    language = (attachment.get("language") or "").lower()
    return ENGLISH if language == "en" or language.startswith("en-") else 0


def _author(authors: list | None, ctx) -> int | None:
    for author in authors or ():
        ref = reference(author) or ""
        if ref.startswith("Practitioner"):
            return ctx.reference_id(ref, "provider")
    return None


def _title(attachment: dict, fallback: str | None) -> str | None:
    title = attachment.get("title") or fallback
    if not attachment_text(attachment) and attachment.get("contentType"):
        title = f"{title or 'attachment'} [{attachment['contentType']}]"
    return clip(title, 250)


def note_rows(resource: dict, ctx, attachments: list[dict], kind: dict | None, when, *, title: str | None,
              provider_id, visit_id, study: str | None) -> list[Row]:
    """One ``note`` per attachment of ``resource`` (what DocumentReference and DiagnosticReport share)."""
    if not attachments:
        return []
    person_id = ctx.person_id(reference(resource.get("subject")))
    note_class = ctx.concept(kind, "Note") if kind else None
    image = ctx.reference_id(study, "image_occurrence") if study else None
    day, moment = when
    return [Row("note", {
        "note_id": ctx.row_id(resource["resourceType"], resource["id"], "note", i),
        "person_id": person_id,
        "note_date": day,
        "note_datetime": moment,
        "note_type_concept_id": EHR,
        "note_class_concept_id": note_class.concept_id if note_class else 0,
        "note_title": _title(attachment, title),
        "note_text": attachment_text(attachment),
        "encoding_concept_id": UTF8,
        "language_concept_id": _language(attachment),
        "provider_id": provider_id,
        "visit_occurrence_id": visit_id,
        "note_source_value": clip(first_code(kind), 50),
        "note_event_id": image,
        "note_event_field_concept_id": 0 if study else None,
    }) for i, attachment in enumerate(attachments)]


def map_document_reference(resource: dict, ctx) -> list[Row]:
    """DocumentReference -> a ``note`` per content attachment."""
    if resource.get("status") in SKIPPED_STATUSES or resource.get("docStatus") in SKIPPED_STATUSES:
        return []
    context = resource.get("context") or {}
    start, _end = period(context.get("period"))
    when = required_datetime(resource, start, resource.get("date"), what="context.period.start or date")
    encounter = next((reference(e) for e in context.get("encounter") or () if reference(e)), None)
    study = next((reference(r) for r in context.get("related") or ()
                  if (reference(r) or "").startswith("ImagingStudy/")), None)
    kind = resource.get("type")
    return note_rows(resource, ctx, [c.get("attachment") or {} for c in resource.get("content") or ()], kind, when,
                     title=resource.get("description") or text_of(kind), provider_id=_author(resource.get("author"), ctx),
                     visit_id=ctx.reference_id(encounter, "visit_occurrence"), study=study)


def presented_form_notes(resource: dict, ctx) -> list[Row]:
    """The ``presentedForm`` of a DiagnosticReport as notes (the report text a radiologist wrote)."""
    forms = resource.get("presentedForm") or []
    if not forms:
        return []
    kind = resource.get("code")
    authors = (resource.get("resultsInterpreter") or []) + (resource.get("performer") or [])
    study = next((reference(r) for r in resource.get("imagingStudy") or () if reference(r)), None)
    return note_rows(resource, ctx, forms, kind, effective(resource), title=text_of(kind),
                     provider_id=_author(authors, ctx),
                     visit_id=ctx.reference_id(reference(resource.get("encounter")), "visit_occurrence"), study=study)
