"""Encounter type and class kept on the visit; the ``visit`` criterion and index kind (issue 19.4).

On the real Synthea export (../shared/fhir/synthea-bulk-10): expected numbers come from the NDJSON
files themselves, the answers from real specs run through the node (``run_request``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

import orjson
import pytest
from sqlalchemy import select

from cdm.schema import tables
from cdm.spec import SpecError, parse_spec
from cdm.vocabulary import Vocabulary
from node.execute import run_request
from node.ingest.engine import ingest_paths

SYNTHEA = "fhir/synthea-bulk-10"
SNOMED = "http://snomed.info/sct"


def _encounters(folder) -> list[dict]:
    return [orjson.loads(x) for x in (folder / "Encounter.000.ndjson").read_bytes().splitlines() if x.strip()]


def _count(engine, cohort) -> int | None:
    response = run_request(engine, None, {"spec": {"cohort": cohort, "analysis": {"type": "count"}}})
    assert response["status"] == "ok", response
    return response["result"]["n"]


def test_encounter_type_and_class_select_visits(any_cdm, shared_dir):
    folder = shared_dir / SYNTHEA
    encounters = _encounters(folder)
    ingest_paths(any_cdm, [folder], workers=0)

    # every visit keeps its type as the source (value and concept), its class as the visit concept
    visit = tables["visit_occurrence"]
    with any_cdm.connect() as conn:
        rows = conn.execute(select(visit.c.visit_source_value, visit.c.visit_source_concept_id,
                                   visit.c.visit_concept_id)).all()
    assert Counter(r[0] for r in rows) == Counter(e["type"][0]["coding"][0]["code"] for e in encounters)
    vocabulary = Vocabulary(any_cdm)
    for code in {r[0] for r in rows}:
        assert vocabulary.lookup("SNOMED", code).source_concept_id in {r[1] for r in rows if r[0] == code}
    assert {r[2] for r in rows} <= {9201, 9202, 9203, 0} and 9202 in {r[2] for r in rows}

    # persons with an encounter of a type / of a class: the cohort a researcher could not build before
    by_type: dict[str, set] = defaultdict(set)
    by_class: dict[str, set] = defaultdict(set)
    for e in encounters:
        by_type[e["type"][0]["coding"][0]["code"]].add(e["subject"]["reference"])
        by_class[e["class"]["code"]].add(e["subject"]["reference"])
    common = next(code for code, persons in sorted(by_type.items()) if len(persons) >= 5)
    assert _count(any_cdm, {"index": {"kind": "visit", "types": [f"SNOMED:{common}"]}}) == len(by_type[common])
    assert _count(any_cdm, {"index": {"kind": "visit", "codes": ["Visit:OP"]}}) == len(by_class["AMB"])
    assert _count(any_cdm, {"inclusion": [{"kind": "visit", "types": [f"SNOMED:{common}"]}]}) == len(by_type[common])

    # index on the first visit of that type: a window after it sees only later visits
    first = {}
    for e in sorted(encounters, key=lambda e: e["period"]["start"]):
        if e["type"][0]["coding"][0]["code"] == common:
            first.setdefault(e["subject"]["reference"], dt.date.fromisoformat(e["period"]["start"][:10]))
    later = {e["subject"]["reference"] for e in encounters
             if e["subject"]["reference"] in first and e["class"]["code"] == "AMB"
             and dt.date.fromisoformat(e["period"]["start"][:10]) > first[e["subject"]["reference"]]}
    got = _count(any_cdm, {"index": {"kind": "visit", "types": [f"SNOMED:{common}"]},
                           "inclusion": [{"kind": "visit", "codes": ["Visit:OP"], "window": {"start": 1}}]})
    assert got == (len(later) if len(later) >= 5 else None)

    # a visit type this node has never seen: the index cannot be built, and the node says so
    response = run_request(any_cdm, None, {"spec": {"cohort": {"index": {"kind": "visit", "types": ["SNOMED:1"]}},
                                                    "analysis": {"type": "count"}}})
    assert response["status"] == "refused" and response["code"] == "UNKNOWN_CODE"


def test_visit_criterion_is_validated():
    spec = parse_spec({"cohort": {"index": {"kind": "visit", "codes": ["Visit:IP"], "length_days": {"min": 2}}}})
    assert spec.cohort.index.kind == "visit"
    with pytest.raises(SpecError, match="length_days"):
        parse_spec({"cohort": {"inclusion": [{"kind": "visit", "length_days": {"min": 3, "max": 1}}]}})
    with pytest.raises(SpecError, match="types"):
        parse_spec({"cohort": {"index": {"kind": "visit", "types": ["not a code"]}}})
