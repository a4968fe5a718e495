"""The model spec: what ``radfed train SPEC`` asks the federation to learn.

A model spec reuses the query language (:mod:`cdm.spec`) for *who* (``cohort``) and *what*
(``variables``), and adds what to fit::

    name: adc_pfa
    cohort: {index: {kind: condition, codes: ["SNOMED:443487006"]}}
    variables:
      adc: {kind: image_feature, code: "RADFED:adc_mean"}
      age: {kind: age}
      pfa: {kind: condition, codes: ["RADFED:ependymoma_pfa"]}       # 0/1
    features: [adc, age]
    target: pfa
    model: {type: logistic}                     # logistic | mlp | patient_encoder
    training: {strategy: newton, rounds: 8}     # newton | fedavg | fedprox

``newton`` is federated Newton-Raphson for the logistic model (each site returns its gradient and
Hessian at the broadcast coefficients, FedAvg weights them by rows, the server takes the step; GLORE,
Wu et al., JAMIA 2012) and reaches the pooled maximum-likelihood fit exactly.  ``fedavg`` (McMahan et
al., AISTATS 2017) and ``fedprox`` (Li et al., MLSys 2020) run local epochs of full-batch gradient
descent at each site and average the weights.

``patient_encoder`` is the zero-shot rare-disease matcher (:mod:`cdm.learn.zeroshot`): the target
is a categorical condition variable (``{label: code}``) and ``zero_shot.descriptions`` gives each
label's free-text description; labels in ``zero_shot.held_out`` are never trained on.

The spec language caps a query at 60 variables; a model may use up to :data:`MAX_FEATURES`, fetched
in chunks (:func:`frame_specs`) that share the cohort, so each chunk is an ordinary query spec.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from cdm import spec as S
from cdm.errors import BadInput
from cdm.messages import RefusalCode, ReplyStatus

MAX_FEATURES = 200
#: Variables per compiled query chunk (below the spec language's 60-variable cap).
CHUNK = 50

Name = S.Name
Label = S.Label


class ModelKind(S.Model):
    type: Literal["logistic", "mlp", "patient_encoder"] = "logistic"
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(max_length=4)] = [32]
    #: Patient-encoder output size; must equal the text encoder's (384 for all-MiniLM-L6-v2).
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] = 384


class Training(S.Model):
    strategy: Literal["newton", "fedavg", "fedprox"] = "fedavg"
    rounds: Annotated[int, Field(ge=1, le=500)] = 10
    local_epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    learning_rate: Annotated[float, Field(gt=0, le=100)] = 0.1
    proximal_mu: Annotated[float, Field(ge=0, le=100)] = 0.0
    #: Ridge penalty (per row), keeps Newton steps defined on separable data.
    l2: Annotated[float, Field(ge=0, le=100)] = 0.0
    #: Contrastive temperature of the zero-shot objective.
    temperature: Annotated[float, Field(gt=0, le=10)] = 0.1
    seed: int = 0


class ZeroShot(S.Model):
    descriptions: Annotated[dict[Label, Annotated[str, Field(min_length=1, max_length=2000)]],
                            Field(min_length=2, max_length=1000)]
    held_out: Annotated[list[Label], Field(max_length=1000)] = []
    #: Free-text names of the feature variables (e.g. HPO term labels): the encoder's first layer
    #: starts from their text embeddings, so a patient starts near the words for their phenotypes.
    feature_text: dict[Name, Annotated[str, Field(min_length=1, max_length=255)]] = {}


class Federation(S.Model):
    """Every connected SuperNode is asked; a round needs ``min_sites`` answers."""

    min_sites: Annotated[int, Field(ge=1, le=200)] = 2
    timeout: Annotated[float, Field(gt=0, le=86_400)] = 600


class ModelSpec(S.Model):
    """A complete model spec (see the module docstring)."""

    version: Literal[1] = 1
    name: Name
    cohort: S.Cohort = S.Cohort()
    variables: Annotated[dict[Name, S.Variable], Field(min_length=2, max_length=MAX_FEATURES + 1)]
    features: Annotated[list[Name], Field(min_length=1, max_length=MAX_FEATURES)]
    target: Name
    model: ModelKind = ModelKind()
    training: Training = Training()
    zero_shot: ZeroShot | None = None
    federation: Federation = Federation()

    @model_validator(mode="after")
    def _consistent(self):
        problems = []
        for i, name in enumerate(self.features):
            if name not in self.variables:
                problems.append(f"features[{i}]: unknown variable {name!r} (define it under variables)")
            elif self.variables[name].categorical:
                problems.append(f"features[{i}]: {name!r} is categorical; features must be numeric or 0/1")
        if len(set(self.features)) != len(self.features):
            problems.append("features: a variable is listed twice")
        if self.target not in self.variables:
            problems.append(f"target: unknown variable {self.target!r}")
        elif self.target in self.features:
            problems.append("target: the target cannot also be a feature")
        else:
            target = self.variables[self.target]
            encoder = self.model.type == "patient_encoder"
            if encoder and not (isinstance(target, S.ConditionVar) and target.categorical):
                problems.append("target: a patient_encoder needs a categorical condition variable {label: code}")
            if not encoder and target.categorical:
                problems.append("target: logistic and mlp models need a 0/1 target (condition codes as a list, variant presence)")
        if self.model.type == "patient_encoder":
            if self.zero_shot is None:
                problems.append("zero_shot: a patient_encoder needs descriptions of the target's labels")
            elif self.target in self.variables and isinstance(self.variables[self.target], S.ConditionVar):
                labels = set(self.variables[self.target].codes)
                missing = sorted(labels - set(self.zero_shot.descriptions))
                if missing:
                    problems.append(f"zero_shot.descriptions: no description for {missing}")
                unknown = sorted(set(self.zero_shot.held_out) - labels)
                if unknown:
                    problems.append(f"zero_shot.held_out: {unknown} are not labels of the target")
                if len(labels - set(self.zero_shot.held_out)) < 2:
                    problems.append("zero_shot.held_out: at least two labels must remain for training")
                extra = sorted(set(self.zero_shot.feature_text) - set(self.features))
                if extra:
                    problems.append(f"zero_shot.feature_text: {extra} are not features")
        elif self.training.strategy == "newton" and self.model.type != "logistic":
            problems.append("training.strategy: newton is defined for the logistic model only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def n_parameters(self) -> int:
        """Parameters the model fits (what a site's ``rows_per_parameter`` rule counts)."""
        p = len(self.features)
        if self.model.type == "logistic":
            return p + 1
        widths = [p, *self.model.hidden, self.model.embedding_dim if self.model.type == "patient_encoder" else 1]
        return sum((a + 1) * b for a, b in zip(widths, widths[1:]))

    def training_labels(self) -> list[str]:
        """Target labels trained on (patient encoder): every label not held out, in spec order."""
        held = set(self.zero_shot.held_out) if self.zero_shot else set()
        return [label for label in self.variables[self.target].codes if label not in held]

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: the provenance key of a trained model."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True),
                          sort_keys=True, separators=(",", ":"))


class ModelSpecError(BadInput, ValueError):
    """A model spec that does not validate; the message names each offending field."""

    reply_status = ReplyStatus.REFUSED  # a site refuses a training round it cannot read (node/learn)
    reply_code = RefusalCode.BAD_SPEC

    def reply_message(self) -> str:
        return str(self)


def parse_model_spec(data) -> ModelSpec:
    if isinstance(data, ModelSpec):
        return data
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ModelSpecError(f"model spec is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelSpecError("a model spec must be a mapping")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelSpecError("; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
        )) from None


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read a YAML or JSON model spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelSpecError(f"cannot read model spec {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelSpecError(f"{path}: not YAML/JSON: {exc}") from None
    return parse_model_spec(data)


def frame_specs(model: ModelSpec) -> list[tuple[S.Spec, list[str]]]:
    """Query specs (same cohort) fetching the target and every feature, at most :data:`CHUNK`
    variables each; with the variable names each chunk's frame returns, target first."""
    names = [model.target, *model.features]
    chunks = [names[i:i + CHUNK] for i in range(0, len(names), CHUNK)]
    return [(S.Spec(cohort=model.cohort, variables={n: model.variables[n] for n in chunk}), chunk)
            for chunk in chunks]
