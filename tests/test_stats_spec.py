"""The researcher-level multi-round analysis types validate through cdm.spec.parse_spec."""

from __future__ import annotations

import pytest

from cdm.spec import ANALYSIS_TYPES, SpecError, analysis_variables, parse_spec
from coordinator.stats import ANALYSES

VARIABLES = {"age": {"kind": "age"}, "sex": {"kind": "sex"}, "tf": {"kind": "ctdna", "field": "tumour_fraction",
                                                                       "time_varying": True},
             "mdm2": {"kind": "variant", "gene": "MDM2", "variant_type": "cnv"}}
TIME = {"event": {"kind": "death"}}
GOOD = {
    "km": {"type": "km", "time": TIME, "group": "sex", "bin_days": 14},
    "cox": {"type": "cox", "time": TIME, "covariates": ["age", "tf"], "time_varying": True, "ties": "breslow"},
    "glm": {"type": "glm", "family": "binomial", "outcome": "mdm2", "covariates": ["age"]},
    "quantile": {"type": "quantile", "variable": "age", "probs": [0.5, 0.9]},
    "correlation": {"type": "correlation", "variables": ["age", "tf"]},
    "concordance": {"type": "concordance", "imaging": "mdm2", "ctdna": "mdm2", "imaging_sens": 0.8, "imaging_spec": 0.9,
                    "ctdna_sens": 0.7, "ctdna_spec": 0.9, "prior": 0.3},
    "habitat": {"type": "habitat", "gene": "TP53", "habitats": ["necrotic", "enhancing"]},
}


def test_every_analysis_the_coordinator_runs_is_a_spec_type():
    assert set(ANALYSES) <= set(ANALYSIS_TYPES) and set(GOOD) == set(ANALYSES)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_specs_parse_with_defaults(kind):
    spec = parse_spec({"variables": VARIABLES, "analysis": GOOD[kind]})
    assert spec.analysis.type == kind
    for _, name in analysis_variables(spec.analysis):
        assert name in VARIABLES
    if kind == "cox":
        assert spec.analysis.mode == "pooled" and spec.analysis.max_iter == 50


@pytest.mark.parametrize("analysis,message", [
    ({"type": "cox", "time": TIME, "covariates": ["age", "tf"]}, "time-varying; set time_varying: true"),
    ({"type": "cox", "time": TIME, "covariates": ["sex"]}, "categorical"),
    ({"type": "cox", "time": TIME, "covariates": ["age"], "tol": 0.5}, "tol"),
    ({"type": "glm", "family": "poisson", "outcome": "mdm2", "covariates": ["age"]}, "family"),
    ({"type": "glm", "family": "gaussian", "outcome": "bmi", "covariates": ["age"]}, "unknown variable 'bmi'"),
    ({"type": "quantile", "variable": "age", "probs": [1.5]}, "probs"),
    ({"type": "correlation", "variables": ["age"]}, "variables"),
    ({"type": "km", "time": TIME, "group": "age"}, "must be categorical or 0/1"),
    ({"type": "habitat", "habitats": ["a", "b"]}, "gene or variant_type"),
    ({"type": "habitat", "gene": "TP53", "habitats": ["a", "a"]}, "distinct"),
])
def test_bad_specs_name_the_problem(analysis, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"variables": VARIABLES, "analysis": analysis})
