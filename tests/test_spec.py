"""The spec language: YAML/JSON loading, errors that name the field, JSON Schema, hashing."""

import json

import pytest

from cdm.spec import SpecError, approval_key, load_spec, loads_spec, spec_hash, spec_json_schema

YAML = """
cohort:
  index: {kind: condition, codes: ["SNOMED:443487006"]}
  age: {min: 18}
  inclusion:
    - {kind: variant, gene: MDM2, variant_type: cnv, window: {start: -90, end: 30}}
    - any:
        - {kind: image_feature, code: "RADFED:adc_mean", value: {max: 1.1}, modality: MR}
        - not: {kind: ctdna, detected: true}
variables:
  adc: {kind: image_feature, code: "RADFED:adc_mean", reduce: first}
  age: {kind: age}
analysis: {type: cox_round, time: {event: {kind: death}}, covariates: [adc, age], beta: [0.0, 0.1]}
"""


def test_yaml_and_json_agree(tmp_path):
    spec = loads_spec(YAML)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec.model_dump(mode="json", by_alias=True)))
    assert spec_hash(load_spec(path)) == spec_hash(spec)
    assert spec.cohort.inclusion[1].any[1].not_.detected is True


def test_approval_key_ignores_beta():
    a = loads_spec(YAML)
    b = loads_spec(YAML.replace("beta: [0.0, 0.1]", "beta: [0.5, 0.2]"))
    assert spec_hash(a) != spec_hash(b) and approval_key(a) == approval_key(b)


@pytest.mark.parametrize("mutation, where", [
    (("window: {start: -90, end: 30}", "window: {start: 30, end: -90}"), "cohort.inclusion[0]"),
    (('"RADFED:adc_mean", value', '"adc_mean", value'), "code"),
    (("beta: [0.0, 0.1]", "beta: [0.0]"), "beta has 1 values"),
    (("covariates: [adc, age]", "covariates: [adc, sexx]"), "unknown variable 'sexx'"),
    (("{kind: age}", "{kind: sex}"), "categorical"),
    (("gene: MDM2, ", "genes: MDM2, "), "genes"),
])
def test_bad_spec_names_the_field(mutation, where):
    with pytest.raises(SpecError) as info:
        loads_spec(YAML.replace(*mutation))
    assert where in str(info.value)


def test_not_yaml_and_schema():
    with pytest.raises(SpecError):
        loads_spec("cohort: [unclosed")
    schema = spec_json_schema()
    assert "analysis" in schema["properties"] and "CoxRound" in schema["$defs"]
