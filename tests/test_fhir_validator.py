"""The fast FHIR validator (node.ingest.precheck in front of fhir.resources) gives fhir.resources'
verdicts: on a corpus of invalid resources built here, on lax input the models accept, on random
mutations of the real Synthea export, and on the real exports themselves.

The reference verdict is ``model_problem`` (fhir.resources' R4B models alone, the validator the
ingest used before); ``problem`` (what the ingest runs) must return exactly the same reason.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import orjson
import pytest

from node.ingest.precheck import conforms
from node.ingest.validate import INVALID_RESOURCE, model_problem, problem

SYNTHEA = "fhir/synthea-bulk-10"

PATIENT = {
    "resourceType": "Patient", "id": "p1", "active": True, "gender": "female", "birthDate": "1961-04-02",
    "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
    "identifier": [{"system": "urn:mrn", "value": "123"}],
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                   "valueAddress": {"city": "Basel", "country": "CH"}}],
    "deceasedDateTime": "2020-01-01T10:00:00+01:00",
}
OBSERVATION = {
    "resourceType": "Observation", "id": "o1", "status": "final",
    "meta": {"lastUpdated": "2021-03-04T05:06:07.123Z", "profile": ["http://example.org/p"]},
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2021-03-04",
    "issued": "2021-03-04T05:06:07Z",
    "valueQuantity": {"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    "component": [{"code": {"text": "x"}, "valueInteger": 3}],
}
CONDITION = {
    "resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254837009"}]},
    "onsetDateTime": "2019-05", "recordedDate": "2019-05-06T00:00:00Z",
    "clinicalStatus": {"coding": [{"code": "active"}]},
}


def _with(base: dict, path: str, value=..., *, drop: bool = False) -> dict:
    """A copy of ``base`` with ``path`` (dotted; list indexes as numbers) set to ``value`` or dropped."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        last = int(last)
    if drop:
        del node[last]
    else:
        node[last] = value
    return out


#: (label, resource): every one is invalid FHIR R4 and fhir.resources rejects it.
INVALID = [
    # wrong types
    ("complex element given as text", _with(OBSERVATION, "code", "heart rate")),
    ("reference as a bare string", _with(OBSERVATION, "subject", "Patient/p1")),
    ("boolean as a word", _with(PATIENT, "active", "maybe")),
    ("date as a number", _with(PATIENT, "birthDate", 19610402)),
    ("string as a number", _with(PATIENT, "name.0.family", 42)),
    ("quantity as a number", _with(OBSERVATION, "valueQuantity", 72.5)),
    ("integer with a fraction", _with(OBSERVATION, "component.0.valueInteger", 3.5)),
    ("integer beyond 32 bits", _with(OBSERVATION, "component.0.valueInteger", 2 ** 31)),
    ("object where a list belongs", _with(PATIENT, "name", {"family": "Doe"})),
    # bad cardinality
    ("two values for a single code", _with(PATIENT, "gender", ["male", "female"])),
    ("a list for a single element", _with(OBSERVATION, "code", [{"text": "a"}, {"text": "b"}])),
    ("two choices of value[x]", _with(OBSERVATION, "valueString", "high")),
    ("two choices of effective[x]", _with(OBSERVATION, "effectivePeriod", {"start": "2021-03-04"})),
    ("two choices of deceased[x]", _with(PATIENT, "deceasedBoolean", True)),
    ("null inside a list of elements", _with(PATIENT, "name", [None])),
    # missing required elements
    ("Observation without code", _with(OBSERVATION, "code", drop=True)),
    ("Observation without status", _with(OBSERVATION, "status", drop=True)),
    ("Condition without subject", _with(CONDITION, "subject", drop=True)),
    ("component without code", _with(OBSERVATION, "component.0.code", drop=True)),
    ("extension without url", _with(PATIENT, "extension.0.url", drop=True)),
    # unknown elements
    ("unknown element", _with(PATIENT, "favouriteColour", "blue")),
    ("unknown element in a data type", _with(OBSERVATION, "code.coding.0.label", "HR")),
    ("wrong resourceType inside a data type", _with(OBSERVATION, "code.resourceType", "Patient")),
    # malformed dates
    ("month 13", _with(PATIENT, "birthDate", "1961-13-02")),
    ("30 February", _with(PATIENT, "birthDate", "1961-02-30")),
    ("two-digit year", _with(PATIENT, "birthDate", "61-04-02")),
    ("unpadded month", _with(PATIENT, "birthDate", "1961-4-2")),
    ("date with a time", _with(PATIENT, "birthDate", "1961-04-02T10:00:00Z")),
    ("dateTime without a time zone", _with(OBSERVATION, "effectiveDateTime", "2021-03-04T10:00:00")),
    ("dateTime hour 25", _with(OBSERVATION, "effectiveDateTime", "2021-03-04T25:00:00Z")),
    ("dateTime 31 April", _with(CONDITION, "onsetDateTime", "2019-04-31T00:00:00Z")),
    ("instant without a time", _with(OBSERVATION, "issued", "2021-03-04")),
    ("instant in a local format", _with(OBSERVATION, "meta.lastUpdated", "04/03/2021 05:06")),
    # malformed ids
    ("id with a space", _with(PATIENT, "id", "p 1")),
    ("id with an underscore", _with(PATIENT, "id", "p_1")),
    ("id of 256 characters", _with(PATIENT, "id", "p" * 256)),
    # malformed decimals
    ("decimal with two points", _with(OBSERVATION, "valueQuantity.value", "72.5.1")),
    ("decimal with a leading zero", _with(OBSERVATION, "valueQuantity.value", "072.5")),
    ("decimal as a boolean", _with(OBSERVATION, "valueQuantity.value", True)),
    # malformed codes
    ("empty code", _with(PATIENT, "gender", "")),
    ("code with a leading space", _with(PATIENT, "gender", " female")),
    ("code with a double space", _with(OBSERVATION, "code.coding.0.code", "8867  4")),
    ("empty string", _with(PATIENT, "name.0.family", "")),
    # malformed references
    ("reference as a number", _with(OBSERVATION, "subject.reference", 12)),
    ("empty reference", _with(OBSERVATION, "subject.reference", "")),
    ("reference with an unknown element", _with(OBSERVATION, "subject.target", "Patient/p1")),
    ("reference identifier as text", _with(OBSERVATION, "subject.identifier", "123")),
    # malformed extensions
    ("extension not a list", _with(PATIENT, "extension", {"url": "http://x", "valueString": "a"})),
    ("extension with two values", _with(PATIENT, "extension.0.valueString", "Basel")),
    ("extension with an unknown element", _with(PATIENT, "extension.0.value", "Basel")),
    ("extension value of the wrong type", _with(PATIENT, "extension.0.valueAddress", "Basel")),
    ("nested extension without url", _with(PATIENT, "extension.0.extension", [{"valueCode": "x"}])),
    ("modifierExtension with a bad code", _with(PATIENT, "modifierExtension",
                                                [{"url": "http://x", "valueCode": "a  b"}])),
    ("primitive extension of the wrong shape", _with(PATIENT, "_gender", "female")),
]

#: Valid FHIR, or input the models' lax parsing accepts: fhir.resources passes it, so must the ingest.
ACCEPTED = [
    ("the base Patient", PATIENT), ("the base Observation", OBSERVATION), ("the base Condition", CONDITION),
    ("integer as digits", _with(OBSERVATION, "component.0.valueInteger", "3")),
    ("decimal as digits", _with(OBSERVATION, "valueQuantity.value", "72.50")),
    ("boolean as 'true'", _with(PATIENT, "active", "true")),
    ("code with single spaces", _with(OBSERVATION, "code.coding.0.code", "8867 4")),
    ("partial dates", _with(PATIENT, "birthDate", "1961-04")),
    ("leap day", _with(PATIENT, "birthDate", "1960-02-29")),
    ("leap second", _with(OBSERVATION, "effectiveDateTime", "2016-12-31T23:59:60Z")),
    ("nanosecond instant", _with(OBSERVATION, "issued", "2021-03-04T05:06:07.123456789Z")),
    ("status given by an extension", _with(_with(OBSERVATION, "status", drop=True), "_status",
                                           {"extension": [{"url": "http://x", "valueString": "unknown"}]})),
    ("an unbound status code", _with(OBSERVATION, "status", "finalised")),
    ("reference to an unusual type", _with(OBSERVATION, "subject.reference", "Medication/m1")),
    ("empty list", _with(PATIENT, "name", [])),
    ("a data type naming itself", _with(OBSERVATION, "code.resourceType", "CodeableConcept")),
    ("contained resource", _with(OBSERVATION, "contained", [{"resourceType": "Patient", "id": "in"}])),
]


def _verdicts(resource: dict):
    return problem(resource), model_problem(resource)


@pytest.mark.parametrize("label,resource", INVALID, ids=[label for label, _ in INVALID])
def test_rejects_what_fhir_resources_rejects_with_its_reason(label, resource):
    ours, reference = _verdicts(resource)
    assert reference is not None and reference[0] == INVALID_RESOURCE, f"{label}: fhir.resources accepts it"
    assert ours == reference
    assert not conforms(resource)


@pytest.mark.parametrize("label,resource", ACCEPTED, ids=[label for label, _ in ACCEPTED])
def test_accepts_what_fhir_resources_accepts(label, resource):
    assert _verdicts(resource) == (None, None)


def _export(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.ndjson")):
        if path.name != "log.ndjson":
            out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def synthea(shared_dir) -> list[dict]:
    resources = _export(shared_dir / SYNTHEA)
    assert len(resources) > 5_000
    return resources


def test_same_verdicts_on_the_real_synthea_export(synthea):
    fast = 0
    for resource in synthea:
        assert problem(resource) == model_problem(resource), f"{resource['resourceType']}/{resource['id']}"
        fast += conforms(resource)
    assert fast == len(synthea)  # the whole real export takes the fast path


def test_same_verdicts_on_the_synthetic_export(tmp_path):
    from node.synth import SynthOptions, generate

    generate(tmp_path, SynthOptions(sites=1, patients=40, seed=3, dicom=False))
    folder = tmp_path / "site-1" / "fhir"
    resources = []
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                resources.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # the generator's planted truncated line: the reader's concern
    types = {r.get("resourceType") for r in resources}
    assert {"Patient", "Observation", "ImagingStudy", "DiagnosticReport", "Specimen"} <= types
    rejected = 0
    for resource in resources:
        ours = problem(resource)
        if ours is None or ours[0] == INVALID_RESOURCE:  # not a missing id or an unknown type
            assert ours == model_problem(resource)
        rejected += ours is not None
    assert rejected >= 1  # the generator plants an invalid resource


#: Values a mutation puts in place of an element: wrong JSON types, malformed primitives, valid ones.
_MUTANTS = ["", " ", "x", "a  b", "2021-02-30", "2021-13-01", "2021-03-04T10:00:00", "1961-04-02", "12.50",
            "true", "Patient/p1", 0, -1, 1, 2 ** 31, 3.5, float(1e300), True, False, [], [None], {}, {"x": 1},
            [{"text": "a"}], {"text": "a"}, {"url": "http://x"}]


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix + (index,)
            yield from _paths(item, prefix + (index,))


def _mutate(resource: dict, rng: random.Random) -> dict:
    out = copy.deepcopy(resource)
    paths = [p for p in _paths(out) if p[0] not in ("resourceType", "id")]
    path = rng.choice(paths)
    node = out
    for part in path[:-1]:
        node = node[part]
    action = rng.random()
    if action < 0.15:
        del node[path[-1]]
    elif action < 0.25 and isinstance(node, dict):
        node[path[-1] + "X"] = node[path[-1]]  # an unknown element, or a second choice of value[x]
    elif action < 0.35:
        node[path[-1]] = [node[path[-1]]]
    else:
        node[path[-1]] = rng.choice(_MUTANTS)
    return out


def test_never_passes_what_fhir_resources_rejects_on_mutations(synthea):
    """Random one-element mutations of the real export: whatever the fast check lets through,
    fhir.resources accepts too (the check only ever answers "certainly valid")."""
    rng = random.Random(23)
    rejected = passed = 0
    for _ in range(2_500):
        mutant = _mutate(rng.choice(synthea), rng)
        reference = model_problem(mutant)
        assert problem(mutant) == reference
        if conforms(mutant):
            assert reference is None, orjson.dumps(mutant).decode()
            passed += 1
        rejected += reference is not None
    assert rejected > 1_000 and passed > 200  # both sides of the comparison were exercised
