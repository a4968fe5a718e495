"""Groups from numbers (issue 19.10): a numeric variable cut into labelled groups (thresholds, bins),
usable as KM / log-rank groups, crosstab rows and cohort criteria, under the same disclosure rules.

A log-rank by a 0/1 measurement was rejected ("must be categorical or 0/1") and nothing could
threshold or bin a numeric variable.  Made-up patients through the real FHIR ingest.
"""

from __future__ import annotations

import orjson
import pytest

from cdm.spec import SpecError, parse_spec
from node.execute import run_request
from node.ingest.engine import ingest_paths

LOINC = "http://loinc.org"
#: creatinine per patient (mg/dL): 12 below 1.0, 9 in [1.0, 1.4), 3 at or above 1.4 (a group under 5)
CREATININE = [0.6 + i * 0.03 for i in range(12)] + [1.0 + i * 0.04 for i in range(9)] + [1.5, 1.9, 2.4]
CREAT = {"kind": "measurement", "code": "LOINC:2160-0", "reduce": "last", "window": {}}
GROUPS = {"kind": "groups", "of": CREAT, "cuts": [1.0, 1.4], "labels": ["normal", "raised", "high"]}


def _resources() -> list[dict]:
    out = []
    for i, value in enumerate(CREATININE):
        subject = {"reference": f"Patient/p{i}"}
        out += [
            {"resourceType": "Patient", "id": f"p{i}", "gender": "female" if i % 2 else "male",
             "birthDate": "1950-01-01", **({"deceasedDateTime": f"2021-0{1 + i % 9}-15"} if i % 3 == 0 else {})},
            {"resourceType": "Condition", "id": f"c{i}", "subject": subject, "onsetDateTime": "2020-01-01",
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "709044004"}]}},
            {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": subject,
             "effectiveDateTime": "2020-01-02", "code": {"coding": [{"system": LOINC, "code": "2160-0"}]},
             "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}},
            # a 0/1 finding sent as a boolean: a measurement of 1.0 or 0.0
            {"resourceType": "Observation", "id": f"b{i}", "status": "final", "subject": subject,
             "effectiveDateTime": "2020-01-02", "code": {"coding": [{"system": LOINC, "code": "33914-3"}]},
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                       "code": "laboratory"}]}],
             "valueBoolean": i % 2 == 0},
        ]
    return out


@pytest.fixture
def cdm(any_cdm, tmp_path):
    (tmp_path / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                                    "entry": [{"resource": r} for r in _resources()]}))
    summary = ingest_paths(any_cdm, [tmp_path], workers=0)
    assert summary.total("quarantined") == 0
    return any_cdm


def _run(engine, spec):
    response = run_request(engine, None, {"spec": spec})
    assert response["status"] == "ok", response
    return response["result"]


COHORT = {"index": {"kind": "condition", "codes": ["SNOMED:709044004"]}}


def test_crosstab_and_criteria_by_groups(cdm):
    # the crosstab's rows are the spec's groups; 3 (< 5) is suppressed, and 9 with it, so that the 3
    # cannot be recovered as the released total minus the other cells
    result = _run(cdm, {"cohort": COHORT, "variables": {"creat": GROUPS}, "analysis": {"type": "crosstab", "by": ["creat"]}})
    assert {tuple(c["key"]): c["n"] for c in result["cells"]} == {("normal",): 12, ("raised",): None, ("high",): None}
    assert sorted(map(tuple, result["suppressed"])) == [("high",), ("raised",)]

    # a group criterion selects exactly the persons in it
    def count(criteria: dict) -> dict:
        return run_request(cdm, None, {"spec": {"cohort": {**COHORT, **criteria}, "variables": {"creat": GROUPS},
                                                "analysis": {"type": "count"}}})

    group = {"kind": "group", "variable": "creat"}
    assert count({"inclusion": [{**group, "values": ["normal"]}]})["result"]["n"] == 12
    assert count({"inclusion": [{**group, "values": ["raised", "high"]}]})["result"]["n"] == 12
    assert count({"exclusion": [{**group, "values": ["normal"]}]})["result"]["n"] == 12
    assert count({"inclusion": [{"not": {**group, "values": ["high"]}}]})["result"]["n"] == 21
    # a group under the minimum cell count is refused through a criterion as any small count is
    small = count({"inclusion": [{**group, "values": ["high"]}]})
    assert small["status"] == "refused" and small["code"] == "MIN_CELL"


def test_km_by_a_thresholded_0_1_measurement(cdm):
    flag = {"kind": "groups", "of": {"kind": "measurement", "code": "LOINC:33914-3", "window": {}}, "cuts": [0.5],
            "labels": ["absent", "present"]}
    spec = {"cohort": COHORT, "variables": {"flag": flag},
            "analysis": {"type": "km_round", "time": {"event": {"kind": "death"}}, "group": "flag", "bin_days": 365}}
    result = _run(cdm, spec)
    # the groups are the spec's labels (12 persons each; their yearly bins are too small to release here)
    assert set(result["groups"]) == {"absent", "present"}
    # the bare 0/1 measurement still is no group: the message says how to make one
    with pytest.raises(SpecError, match="groups"):
        parse_spec({**spec, "variables": {"flag": flag["of"]}})


def test_groups_are_validated():
    with pytest.raises(SpecError, match="strictly increasing"):
        parse_spec({"variables": {"g": {**GROUPS, "cuts": [1.4, 1.0]}}})
    with pytest.raises(SpecError, match="3 names for 2 cuts"):
        parse_spec({"variables": {"g": {**GROUPS, "labels": ["a", "b"]}}})
    with pytest.raises(SpecError, match="not groups of"):
        parse_spec({"variables": {"g": GROUPS}, "cohort": {"inclusion": [{"kind": "group", "variable": "g", "values": ["x"]}]}})
    with pytest.raises(SpecError, match="not a groups variable"):
        parse_spec({"variables": {"g": CREAT}, "cohort": {"inclusion": [{"kind": "group", "variable": "g", "values": ["x"]}]}})
    with pytest.raises(SpecError, match="categorical"):
        parse_spec({"variables": {"g": GROUPS}, "analysis": {"type": "summary", "variables": ["g"]}})
    assert parse_spec({"variables": {"g": {**GROUPS, "labels": None}}}).variables["g"].group_labels == ["<1", "1-1.4", ">=1.4"]
