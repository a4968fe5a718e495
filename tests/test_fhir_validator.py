"""The fast FHIR validator (node.ingest.precheck in front of fhir.resources) gives fhir.resources'
verdicts: on a corpus of invalid resources built here, on lax input the models accept, on random
mutations of the real Synthea export, and on the real exports themselves.

The reference verdict is ``model_problem`` (fhir.resources' R4B models alone, the validator the
ingest used before); ``problem`` (what the ingest runs) must return exactly the same reason.
"""

from __future__ import annotations

import copy
import math
import random
import struct
from pathlib import Path

import orjson
import pytest

from fhir.resources.R4B import get_fhir_model_class

from node.ingest import precheck
from node.ingest.precheck import conforms
from node.ingest.validate import INVALID_RESOURCE, MISSING_ID, UNKNOWN_RESOURCE_TYPE, model_problem, problem

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


# -- the compiled shape functions' own paths ---------------------------------------------------------

def _fresh_check(resource_type: str):
    """A check of ``resource_type`` with an empty shape table (its elements' tables are shared)."""
    model = precheck._Model(get_fhir_model_class(resource_type), resource_type)
    return lambda resource: (model.shapes.get(tuple(resource)) or model.learn)(resource), model


def test_an_inlined_shape_and_the_dicts_around_it():
    """A shape function inlines the shapes its first value's elements had (valueQuantity's four
    keys); a dict of that size with other keys (the KeyError path), of another size, or with the
    same keys in another order must get the verdict its own shape function gives."""
    check, model = _fresh_check("Observation")
    assert check(OBSERVATION)  # compiled calling Quantity's own shape function, which learns its shape
    assert check(copy.deepcopy(OBSERVATION))  # compiled again, that shape inlined
    function = model.shapes[tuple(OBSERVATION)]
    assert "unit" in function.__code__.co_consts  # valueQuantity's keys are subscripted in place

    def quantity(value):
        return _with(OBSERVATION, "valueQuantity", value)
    cases = [  # (valueQuantity, the fast path passes it, fhir.resources accepts it)
        ({"code": "/min", "system": "http://unitsofmeasure.org", "unit": "/min", "value": 72.5}, True, True),
        ({"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "comparator": "<"}, True, True),
        ({"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org"}, True, True),
        ({"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "colour": "red"}, False, False),
        ({"value": "x", "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}, False, False),
        ({"value": 72.5, "unit": "", "system": "http://unitsofmeasure.org", "code": "/min"}, False, False),
        ({"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": None}, False, True),
        (["not", "a", "dict", "!"], False, False),
    ]
    for value, fast, valid in cases:
        resource = quantity(value)
        assert tuple(resource) == tuple(OBSERVATION)  # the same top shape: its compiled function
        assert (model_problem(resource) is None) == valid, value
        assert check(resource) == fast, value
        assert problem(resource) == model_problem(resource)
    # a list's first element is inlined; the next of another shape goes to its own function
    two = _with(OBSERVATION, "component", OBSERVATION["component"] + [{"code": {"text": "y"}, "valueString": "z"}])
    bad = _with(OBSERVATION, "component", OBSERVATION["component"] + [{"code": {"text": "y"}, "valueString": 5}])
    assert check(two) and model_problem(two) is None
    assert not check(bad) and model_problem(bad) is not None


def test_elements_nested_deeper_than_the_inlined_levels():
    """Extensions in extensions, deeper than a shape function inlines: the innermost value still
    decides."""
    def nested(depth: int, innermost) -> dict:
        extension = {"url": "http://x", "valueCode": innermost}
        for _ in range(depth):
            extension = {"url": "http://x", "extension": [extension]}
        return _with(PATIENT, "extension", [extension])
    check, _ = _fresh_check("Patient")
    for depth in (0, precheck._INLINED_LEVELS - 1, precheck._INLINED_LEVELS + 3):
        assert check(nested(depth, "ok")) and model_problem(nested(depth, "ok")) is None
        for bad in ("a  b", 5):
            assert not check(nested(depth, bad)) and problem(nested(depth, bad)) == model_problem(nested(depth, bad))
            assert model_problem(nested(depth, bad)) is not None


def _floats(n: int, rng: random.Random):
    yield from (0.0, -0.0, 1.0, 0.134, 1e16, 1e22, 1e300, 5e-324, 1.5e-05, 2.0 ** 63, -1e-7,
                math.inf, -math.inf, math.nan)
    for _ in range(n):  # every bit pattern: subnormals, huge and tiny exponents, nans
        yield struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]


def test_decimal_fast_path_agrees_with_the_pattern():
    """A finite float passes without formatting it: exactly the floats whose repr the decimal
    pattern matches."""
    fast = eval(f"lambda x: {precheck._DECIMAL_EXPRESSION.format(x='x')}", precheck._NAMESPACE)
    values = [*_floats(20_000, random.Random(5)), 0, -7, 10 ** 30, True, False, "1.5", None]
    for value in values:
        assert fast(value) == precheck._decimal(value), value
    assert not fast(math.inf) and fast(1e300) and fast(-0.0)


def _date_texts(n: int, rng: random.Random):
    years = ["0000", "0001", "0100", "1000", "1961", "2000", "2100", "9999"]
    months, days = ["00", "01", "02", "04", "09", "12", "13"], ["00", "01", "09", "28", "29", "30", "31", "32"]
    times = ["", "T00:00:00Z", "T23:59:59+14:00", "T24:00:00Z", "T12:31:08-04:00", "T12:31:60Z", "T12:60:00Z",
             "T12:31:08.1234567Z", "T12:31:08.123456+13:59", "T12:31:08+14:01", "T12:31:08", "T12:31Z",
             "T12:31:08.Z", "T1:31:08Z", "T12:31:08+05:30", "T12:31:08-00:00"]
    for _ in range(n):
        text = f"{rng.choice(years)}-{rng.choice(months)}-{rng.choice(days)}{rng.choice(times)}"
        if rng.random() < 0.3:  # one character replaced
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice("0159-:.TZ+ x") + text[at + 1:]
        yield text


def test_common_date_forms_are_a_subset_of_the_full_checks():
    """The common forms' patterns pass only what the FHIR patterns and calendar checks pass."""
    pairs = [(precheck._COMMON_DATE, precheck._date), (precheck._COMMON_DATETIME, precheck._datetime),
             (precheck._COMMON_INSTANT, precheck._instant)]
    common = full_only = 0
    for text in _date_texts(30_000, random.Random(11)):
        for pattern, check in pairs:
            if pattern.fullmatch(text):
                assert check(text), text
                common += 1
            else:
                full_only += check(text)
    assert common > 3_000 and full_only > 300  # both ways to a pass were taken


def test_remembered_dates_give_the_same_verdicts(monkeypatch):
    """Passed dateTimes are remembered (and forgotten past the limit); failed ones never are."""
    monkeypatch.setattr(precheck, "_REMEMBERED", 3)
    remembered = [v for k, v in precheck._NAMESPACE.items() if k.startswith("_passed")]
    assert remembered
    for kept in remembered:
        kept.clear()  # what earlier tests left
    values = ["2021-03-04", "2021-02-30", "2021-03-04T10:00:00Z", "2021-03-04T10:00:00", "2020",
              "2021-03-04T25:00:00Z", "2016-12-31T23:59:60Z", "2021-03-05", "2021-03-06T01:02:03.5+01:00"]
    for value in values * 3:
        resource = _with(OBSERVATION, "effectiveDateTime", value)
        assert problem(resource) == model_problem(resource), value
        if conforms(resource):
            assert model_problem(resource) is None, value
    assert conforms(_with(OBSERVATION, "effectiveDateTime", "2021-03-04"))
    assert not conforms(_with(OBSERVATION, "effectiveDateTime", "2021-02-30"))
    assert all(len(kept) <= 3 for kept in remembered)
    assert not any("2021-02-30" in kept or "2021-03-04T10:00:00" in kept for kept in remembered)


def test_past_the_shape_limit_fhir_resources_decides(monkeypatch):
    monkeypatch.setattr(precheck, "_SHAPES_KEPT", 0)
    check, _ = _fresh_check("Patient")
    assert not check(PATIENT)  # not compiled: the caller asks fhir.resources
    reordered = dict(reversed(PATIENT.items()))  # a shape conforms() has not met
    assert not conforms(reordered)
    assert problem(reordered) is None and model_problem(reordered) is None


def test_resource_types_are_kept_misspelt_names_bounded(monkeypatch):
    monkeypatch.setattr(precheck, "_RESOURCES", {})
    monkeypatch.setattr(precheck, "_SHAPES_KEPT", 1)
    assert not conforms(_with(PATIENT, "resourceType", "Patiant"))  # kept: under the limit
    assert not conforms(_with(PATIENT, "resourceType", "Patientt"))  # not kept: past it
    assert conforms(PATIENT)  # kept past the limit (a real type)
    assert precheck._RESOURCES.keys() == {"Patiant", "Patient"}


def test_reason_codes_before_the_models():
    """problem() takes the fast path first; a resource it passes still needs an id."""
    no_id = _with(PATIENT, "id", drop=True)
    assert conforms(no_id)  # Resource.id is optional in FHIR
    assert problem(no_id)[0] == MISSING_ID
    assert problem(_with(PATIENT, "id", ""))[0] == MISSING_ID
    assert problem(_with(PATIENT, "resourceType", "Patiant"))[0] == UNKNOWN_RESOURCE_TYPE
    assert problem(_with(PATIENT, "resourceType", 5))[0] == UNKNOWN_RESOURCE_TYPE
    assert problem(_with(_with(PATIENT, "id", drop=True), "birthDate", "x"))[0] == MISSING_ID
