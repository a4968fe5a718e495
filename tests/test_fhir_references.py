"""References to resources not loaded yet, absent Patients, and skipped types (issue 19.8, 19.9).

A patient Bundle loaded before its practitioners and organisations used to leave every visit's
provider and care site NULL, silently, and loading them later did not fix it without ``--force``.
"""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cdm.ids import stable_id
from cdm.schema import tables
from node.cli import main
from node.ingest.engine import ingest_paths

NPI = "http://hl7.org/fhir/sid/us-npi"


def _bundle(path, *resources):
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                   "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}))
    return path


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1970-01-01"}
ENCOUNTERS = [{"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": "Patient/p1"}, "period": {"start": f"2021-0{i}-01T10:00:00Z"},
               "participant": [{"individual": {"reference": ref}}],
               "serviceProvider": {"reference": "Organization/org1"}}
              for i, ref in ((1, "Practitioner/dr1"), (2, f"Practitioner?identifier={NPI}|999"))]
PRACTITIONERS = [{"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "One"}]},
                 {"resourceType": "Practitioner", "id": "dr2", "name": [{"family": "Two"}],
                  "identifier": [{"system": NPI, "value": "999"}]}]
ORGANIZATION = {"resourceType": "Organization", "id": "org1", "name": "General"}


def _visits(engine) -> dict:
    v = tables["visit_occurrence"]
    with engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(select(v.c.visit_occurrence_id, v.c.provider_id,
                                                                  v.c.care_site_id))}


def test_late_practitioners_and_organisations_fill_the_visits_later(any_cdm, tmp_path):
    first = tmp_path / "patients"
    first.mkdir()
    _bundle(first / "patient.json", PATIENT, *ENCOUNTERS)
    summary = ingest_paths(any_cdm, [first], workers=0)
    assert summary.total("loaded") == 3 and summary.partial
    assert summary.unresolved_references == {"Organization": 2, "Practitioner": 2}
    assert "references waiting for resources not loaded yet: Organization 2, Practitioner 2" in summary.text()
    e1, e2 = (stable_id("fhir", "Encounter", e) for e in ("e1", "e2"))
    assert _visits(any_cdm) == {e1: (None, None), e2: (None, None)}

    later = tmp_path / "directory"
    later.mkdir()
    _bundle(later / "practitioners.json", *PRACTITIONERS, ORGANIZATION)
    summary = ingest_paths(any_cdm, [later], workers=0)
    assert summary.references_resolved == 4 and summary.unresolved_references == {} and not summary.partial
    dr1, dr2, org = (stable_id("fhir", t, i) for t, i in (("Practitioner", "dr1"), ("Practitioner", "dr2"),
                                                           ("Organization", "org1")))
    assert _visits(any_cdm) == {e1: (dr1, org), e2: (dr2, org)}

    # an updated Encounter that now names another practitioner replaces its pending reference too
    again = ingest_paths(any_cdm, [first], workers=0)
    assert again.total("unchanged") == 3 and _visits(any_cdm) == {e1: (dr1, org), e2: (dr2, org)}


def test_a_reference_resolves_later_in_the_same_run(sqlite_cdm, tmp_path):
    # one file per Bundle: the patient's first (alphabetical order of equal-rank Bundles), then the directory
    _bundle(tmp_path / "a.json", PATIENT, *ENCOUNTERS)
    _bundle(tmp_path / "b.json", *PRACTITIONERS, ORGANIZATION)
    summary = ingest_paths(sqlite_cdm, [tmp_path], workers=0)
    assert not summary.partial and summary.unresolved_references == {}
    assert all(p is not None and c is not None for p, c in _visits(sqlite_cdm).values())


def test_absent_patient_reasons_and_skipped_types_say_where_to_look(sqlite_cdm, tmp_path):
    no_subject = {"resourceType": "Observation", "id": "c0", "status": "final", "code": {"text": "x"},
                  "effectiveDateTime": "2020-01-01"}  # Observation.subject is optional in R4
    condition = {"resourceType": "Condition", "code": {"text": "x"}, "onsetDateTime": "2020-01-01"}
    absent = {**condition, "id": "c1", "subject": {"reference": "Patient/ghost"}}
    not_in_bundle = {**condition, "id": "c2", "subject": {"reference": "urn:uuid:gone"}}
    group = {**condition, "id": "c3", "subject": {"reference": "Group/g1"}}
    flag = {"resourceType": "Flag", "id": "f1", "status": "active", "code": {"text": "fall risk"},
            "subject": {"reference": "Patient/p1"}}
    _bundle(tmp_path / "b.json", PATIENT, no_subject, absent, not_in_bundle, group, flag)
    summary = ingest_paths(sqlite_cdm, [tmp_path], workers=0)
    q = tables["quarantine"]
    with sqlite_cdm.connect() as conn:
        reasons = {r.resource_id: (r.reason_code, r.reason) for r in conn.execute(select(q))}
    assert reasons["c0"][0] == "NO_PATIENT" and "has no patient" in reasons["c0"][1]
    assert reasons["c1"][0] == "UNKNOWN_PATIENT" and "Patient/ghost is absent" in reasons["c1"][1]
    assert "not a Patient reference" not in reasons["c1"][1]
    assert reasons["c2"][0] == "UNKNOWN_PATIENT" and "no entry of this Bundle" in reasons["c2"][1]
    assert reasons["c3"][0] == "NO_PATIENT" and "'Group/g1' is not a Patient reference" in reasons["c3"][1]
    # a known FHIR type radfed does not map is counted, and the summary says which file keeps it
    assert summary.skipped == {"Flag: no mapper": 1}
    assert summary.skipped_files == {"Flag: no mapper": [str(tmp_path / "b.json")]}
    assert f"skipped 1: Flag: no mapper (not copied into the CDM; they stay in {tmp_path / 'b.json'})" \
        in summary.text()

    result = CliRunner().invoke(main, ["--db", str(sqlite_cdm.url.database), "ingest", "fhir", "--json", str(tmp_path)])
    assert result.exit_code == 3 and orjson.loads(result.output)["quarantined"] == 4


def test_a_remembered_patient_answer_is_dropped_with_what_the_run_forgot(sqlite_cdm):
    # RunContext.person_id remembers its answers by reference string; an answer must not outlive the
    # bounded memory it came from: once the run forgot the Patient (and the CDM does not hold it),
    # the same reference is an unknown patient again, as it was before the memo.
    from node.ingest.context import UNKNOWN_PATIENT, RunContext
    from node.ingest.contract import Unmappable

    ctx = RunContext(sqlite_cdm, cache_size=1)
    ctx.mark_present("Patient", "p1", "person")
    assert ctx.person_id("Patient/p1") == stable_id("fhir", "Patient", "p1")
    assert ctx.person_id("Patient/p1") == stable_id("fhir", "Patient", "p1")  # the memo's answer
    ctx.mark_present("Patient", "p2", "person")
    ctx.mark_present("Patient", "p3", "person")  # two generations later p1 is forgotten
    with pytest.raises(Unmappable) as raised:
        ctx.person_id("Patient/p1")
    assert raised.value.code == UNKNOWN_PATIENT
    assert ctx.person_id("Patient/p3") == stable_id("fhir", "Patient", "p3")


def test_stable_ids_are_the_blake2b_of_their_parts_whether_remembered_or_not():
    # every CDM row id is this hash of its parts (ids written by earlier runs must not change): the
    # memo of cdm.ids answers a repeated call, and keeps 1, 1.0 and True apart.
    import hashlib

    def by_rule(*parts):
        key = "\x1f".join(str(p) for p in parts).encode("utf-8")
        return (int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & ((1 << 62) - 1)) or 1

    for parts in (("fhir", "Patient", "p1"), ("fhir", "Observation", "o1", "component", 2), ("x", 1), ("x", 1.0),
                  ("x", True), ("q", None, ["unhashable"]), ("dicom-series", "1.2.840.1")):
        assert stable_id(*parts) == by_rule(*parts)
        assert stable_id(*parts) == by_rule(*parts)  # from the memo
    assert len({stable_id("x", 1), stable_id("x", 1.0), stable_id("x", True)}) == 3
