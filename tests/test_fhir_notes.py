"""Clinical notes (issue 19.5): DocumentReference and DiagnosticReport.presentedForm into ``note``.

880 DiagnosticReports with ``presentedForm`` and 880 DocumentReferences were skipped ("no CDM
table").  The resources here are shaped like Synthea's (base64 text/plain notes, LOINC document types,
an encounter and an author) plus what radiology adds: an HTML report, a PDF, and a report about an
ImagingStudy that arrives in a later run.
"""

from __future__ import annotations

import base64

import orjson
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node.execute import run_request
from node.ingest.engine import ingest_paths

LOINC = "http://loinc.org"
PATIENTS = 6
REPORT = "MRI brain: enhancing lesion in the left frontal lobe, 2.3 cm. Impression: glioma likely."


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode()


def _cc(code: str, display: str) -> dict:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _resources(i: int) -> list[dict]:
    subject = {"reference": f"Patient/p{i}"}
    return [
        {"resourceType": "Patient", "id": f"p{i}", "gender": "male", "birthDate": "1966-06-06"},
        {"resourceType": "Practitioner", "id": "rad1", "name": [{"family": "Roentgen"}]},
        {"resourceType": "Encounter", "id": f"e{i}", "status": "finished", "subject": subject,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "period": {"start": "2023-04-05T09:00:00+02:00"}},
        {"resourceType": "DiagnosticReport", "id": f"dr{i}", "status": "final", "subject": subject,
         "code": _cc("18748-4", "Diagnostic imaging study"), "effectiveDateTime": "2023-04-05T09:30:00+02:00",
         "encounter": {"reference": f"Encounter/e{i}"}, "resultsInterpreter": [{"reference": "Practitioner/rad1"}],
         "imagingStudy": [{"reference": f"ImagingStudy/is{i}"}],
         "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en-GB", "data": _b64(REPORT)},
                           {"contentType": "application/pdf", "title": "signed report", "data": _b64("%PDF-1.4")}]},
        {"resourceType": "DocumentReference", "id": f"doc{i}", "status": "current", "subject": subject,
         "type": _cc("11506-3", "Progress note"), "date": "2023-04-06T10:00:00Z",
         "author": [{"reference": "Practitioner/rad1"}],
         "context": {"encounter": [{"reference": f"Encounter/e{i}"}]},
         "content": [{"attachment": {"contentType": "text/html",
                                     "data": _b64("<p>Seen in clinic &amp; <b>well</b>.</p>")}}]},
    ]


def _imaging_study(i: int) -> dict:
    return {"resourceType": "ImagingStudy", "id": f"is{i}", "status": "available", "subject": {"reference": f"Patient/p{i}"},
            "started": "2023-04-05T09:10:00+02:00", "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{i}"}],
            "series": [{"uid": f"2.25.{i}.2", "modality": {"code": "MR"}}, {"uid": f"2.25.{i}.1", "modality": {"code": "MR"}}]}


def _write(path, resources):
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"resource": r} for r in resources]}))


def test_reports_and_documents_become_notes_linked_to_their_study(any_cdm, tmp_path):
    (tmp_path / "one").mkdir()
    _write(tmp_path / "one" / "reports.json", [r for i in range(PATIENTS) for r in _resources(i)])
    summary = ingest_paths(any_cdm, [tmp_path / "one"], workers=0)
    assert summary.total("quarantined") == 0 and summary.total("skipped") == 0
    assert summary.by_type["DocumentReference"]["loaded"] == PATIENTS
    assert summary.unresolved_references == {"ImagingStudy": 2 * PATIENTS}  # two notes a report; studies come later

    note = tables["note"]
    with any_cdm.connect() as conn:
        rows = {r.note_id: r for r in conn.execute(select(note))}
    assert len(rows) == 3 * PATIENTS
    text = rows[stable_id("fhir", "DiagnosticReport", "dr0", "note", 0)]
    assert text.note_text == REPORT and text.language_concept_id == 4180186 and text.encoding_concept_id == 32678
    assert text.note_source_value == "18748-4" and text.note_title == "Diagnostic imaging study"
    assert str(text.note_date) == "2023-04-05" and text.note_datetime.hour == 9  # local time, as written
    assert text.provider_id == stable_id("fhir", "Practitioner", "rad1")
    assert text.visit_occurrence_id == stable_id("fhir", "Encounter", "e0") and text.note_event_id is None
    pdf = rows[stable_id("fhir", "DiagnosticReport", "dr0", "note", 1)]
    assert pdf.note_text == "" and pdf.note_title == "signed report [application/pdf]"
    letter = rows[stable_id("fhir", "DocumentReference", "doc0", "note", 0)]
    assert letter.note_text == "Seen in clinic & well ." and letter.note_source_value == "11506-3"
    assert letter.language_concept_id == 0

    # the ImagingStudy arrives: each report's note now points at the study's first series
    (tmp_path / "two").mkdir()
    _write(tmp_path / "two" / "studies.json", [_imaging_study(i) for i in range(PATIENTS)])
    later = ingest_paths(any_cdm, [tmp_path / "two"], workers=0)
    assert later.references_resolved == 2 * PATIENTS and later.unresolved_references == {}
    with any_cdm.connect() as conn:
        linked = dict(conn.execute(select(note.c.note_id, note.c.note_event_id)).all())
    first_series = min(stable_id("dicom-series", "2.25.0.1"), stable_id("dicom-series", "2.25.0.2"))
    assert linked[stable_id("fhir", "DiagnosticReport", "dr0", "note", 0)] == first_series

    # a spec counts persons by note type (never by note text)
    def count(cohort):
        response = run_request(any_cdm, None, {"spec": {"cohort": cohort, "analysis": {"type": "count"}}})
        assert response["status"] == "ok", response
        return response["result"]["n"]

    assert count({"index": {"kind": "note", "codes": ["LOINC:18748-4"]}}) == PATIENTS
    assert count({"index": {"kind": "visit"},
                  "inclusion": [{"kind": "note", "codes": ["LOINC:11506-3"], "window": {"start": 1, "end": 1}}]}) == PATIENTS
    # the letter is a day after the visit, not on it: nobody, which reads like a small count (issue 16)
    none = run_request(any_cdm, None, {"spec": {"cohort": {"index": {"kind": "visit"}, "inclusion": [
        {"kind": "note", "codes": ["LOINC:11506-3"], "window": {"start": 0, "end": 0}}]}, "analysis": {"type": "count"}}})
    assert (none["status"], none["code"]) == ("refused", "MIN_CELL")
