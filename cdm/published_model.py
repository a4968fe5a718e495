"""A fitted Cox model as the coordinator publishes it to sites (docs/analysis-rounds.md, "Published
models"), and what a site needs to forecast one patient from it.

The file is JSON::

    {"format": "radfed.cox-model/1",
     "name": "progression ~ age + ctDNA tf + SUVmax (time-varying)",
     "time": {"event": {"kind": "episode", "code": "RADFED:progression"}},
     "covariates": ["age", "tf", "suv"],
     "coef": {"age": 0.01, "tf": 2.1, "suv": 0.35},
     "variables": {"age": {"kind": "age"},
                   "tf": {"kind": "ctdna", "field": "tumour_fraction", "time_varying": true},
                   "suv": {"kind": "image_feature", "code": "RADFED:suv_max", "time_varying": true}},
     "baseline": {"times": [12, 30, 61], "cumhaz": [0.01, 0.03, 0.08]},
     "fit": {"sites": ["site-a", "site-b"], "n": 412, "events": 97, "ties": "efron",
             "mode": "pooled", "job_id": "...", "created": "2026-11-25T12:00:00Z"}}

``variables`` use the spec's variable language (:data:`cdm.spec.Variable`), so a site evaluates them
exactly as the rounds did.  ``baseline`` is the Breslow cumulative baseline hazard ``H0(t)`` at
covariates **= 0** (not at their means: a fitter that centres, like lifelines, publishes
``H_mean(t) * exp(-mean'beta)``), ``times`` in days from the start of follow-up, non-decreasing;
``S(t | x) = exp(-H0(t) exp(x'beta))`` (:func:`cdm.rounds.cox_survival`).  ``fit`` is informational.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from cdm import spec as S
from cdm.errors import BadInput

MODEL_FORMAT = "radfed.cox-model/1"
MAX_BASELINE = 100_000


class ModelError(BadInput, ValueError):
    """A published model file that cannot be used (message names the problem)."""


class Baseline(S.Model):
    times: Annotated[list[S.Number], Field(min_length=1, max_length=MAX_BASELINE)]
    cumhaz: Annotated[list[S.Number], Field(min_length=1, max_length=MAX_BASELINE)]

    @model_validator(mode="after")
    def _shape(self):
        if len(self.times) != len(self.cumhaz):
            raise ValueError(f"times has {len(self.times)} values, cumhaz {len(self.cumhaz)}")
        if any(b < a for a, b in zip(self.times, self.times[1:])) or any(b < a for a, b in zip(self.cumhaz, self.cumhaz[1:])):
            raise ValueError("times and cumhaz must be non-decreasing")
        if self.times[0] < 0 or self.cumhaz[0] < 0:
            raise ValueError("times and cumhaz must be >= 0")
        return self


class PublishedCoxModel(S.Model):
    model_config = S.Model.model_config | {"extra": "ignore"}  # newer coordinators may add fields

    format: Literal["radfed.cox-model/1"]
    name: S.Text = "Cox model"
    time: S.SurvivalTime | None = None
    covariates: S.Vars
    coef: dict[S.Name, S.Number]
    variables: dict[S.Name, S.Variable]
    baseline: Baseline
    fit: dict = {}

    @model_validator(mode="after")
    def _complete(self):
        missing = [c for c in self.covariates if c not in self.coef or c not in self.variables]
        if missing:
            raise ValueError(f"covariates {missing} need both a coef and a variable definition")
        categorical = [c for c in self.covariates if self.variables[c].categorical]
        if categorical:
            raise ValueError(f"covariates {categorical} are categorical; a Cox model needs numeric covariates")
        return self

    @property
    def beta(self) -> list[float]:
        return [self.coef[c] for c in self.covariates]


def load_model(path: str | Path) -> PublishedCoxModel:
    """Read and validate a published model file; :class:`ModelError` says what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model file {str(path)!r} is not JSON: {exc}") from None
    try:
        return PublishedCoxModel.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors(include_url=False, include_input=False))
        raise ModelError(f"model file {str(path)!r} is not a {MODEL_FORMAT} model: {problems}") from None
