"""Training data for a Flower run, fetched only through the node's policy-checked path.

The ClientApp never opens the CDM itself: it calls :func:`training_rows`, which

1. requires node.toml ``[learning]`` (a site opts in; without it every run is refused),
2. checks every variable the model reads (features *and* target) against
   ``[learning] allowed_features`` — patterns over a variable's key, :func:`variable_key`,
   e.g. ``["age", "sex", "image_feature:RADFED:*", "condition:HPO:*", "condition:*:RD*"]``,
3. compiles the cohort and variables with the query compiler (:func:`cdm.compiler.frame`: SQLAlchemy
   Core, bound parameters), keeps complete rows,
4. refuses fewer rows than ``[policy] min_rows_model`` or than ``rows_per_parameter`` times the
   model's input width (features + 1; ``[learning] rows_per_parameter`` may override the policy's),
5. suppresses a feature with fewer than ``[policy] min_cell_count`` rows on a side (replaced by its
   most common value, :func:`node.disclosure.shapes.suppress_rare_columns`) and refuses a 0/1 target
   like that (``MIN_CELL``, as the bus's model rounds do): an update's entries for a column one
   patient has are that patient's values (a logistic Hessian's row over its own entry gives the
   patient's other features, the gradient entry the outcome; a network's first-layer update for
   that input is the patient's back-propagated signal),

and :func:`audit_round` writes one hash-chained audit entry per round (accepted or refused).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np

from cdm import spec as S
from cdm.compiler import Resolver, frame
from cdm.learn.modelspec import ModelSpec, frame_specs
from node.audit import AuditLog
from node.disclosure.policy import Policy, Refusal
from node.disclosure.shapes import check_columns, suppress_rare_columns

log = logging.getLogger(__name__)


@dataclass
class LearningPolicy:
    allowed_features: tuple[str, ...]
    min_rows: int
    rows_per_parameter: int
    min_cell: int = 5

    @classmethod
    def from_config(cls, config) -> "LearningPolicy":
        raw = config.section("learning") if config is not None else {}
        if not raw:
            raise Refusal("NOT_ALLOWED", "federated learning is not enabled at this site (node.toml [learning])")
        allowed = raw.get("allowed_features", [])
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise Refusal("NOT_ALLOWED", "[learning] allowed_features must be a list of patterns")
        policy = Policy.from_config(config)
        return cls(tuple(allowed), policy.min_rows_model,
                   int(raw.get("rows_per_parameter", policy.rows_per_parameter)), policy.min_cell_count)


def variable_key(var) -> str:
    """``kind`` or ``kind:SYSTEM:code[,SYSTEM:code...]`` — what ``allowed_features`` patterns match."""
    codes = getattr(var, "codes", None)
    if isinstance(codes, dict):
        codes = list(codes.values())
    code = getattr(var, "code", None)
    gene = getattr(var, "gene", None)
    parts = codes if codes else ([code] if code else ([f"HGNC:{gene}"] if gene else []))
    if isinstance(var, S.CtdnaVar):
        parts = [var.field]
    return var.kind + (":" + ",".join(parts) if parts else "")


def check_features(model: ModelSpec, policy: LearningPolicy) -> None:
    for name in [model.target, *model.features]:
        key = variable_key(model.variables[name])
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in policy.allowed_features):
            raise Refusal("NOT_ALLOWED", f"variable {name!r} ({key}) is not in this site's [learning] allowed_features")


@dataclass
class TrainingRows:
    person_ids: np.ndarray
    X: np.ndarray
    y: list  # 0/1 floats, or category labels (patient encoder)
    suppressed: list[str]  # features held constant here: fewer than min_cell_count rows on a side


def training_rows(engine, config, model: ModelSpec, site: str = "local") -> TrainingRows:
    """The model's complete rows at this site, after every policy check (raises :class:`Refusal`)."""
    policy = LearningPolicy.from_config(config)
    check_features(model, policy)
    resolver = Resolver(engine)
    columns: dict[str, list] = {}
    person_ids = None
    with engine.connect() as conn:
        for spec, names in frame_specs(model):
            f = frame(spec, names, resolver, site)
            rows = conn.execute(f.query).all()
            ids = [r[0] for r in rows]
            if person_ids is not None and ids != person_ids:  # same cohort, same order: a bug if not
                raise RuntimeError("feature chunks returned different cohorts")
            person_ids = ids
            for i, (name, decode) in enumerate(zip(f.names, f.decoders)):
                columns[name] = [decode(r[2 + i]) for r in rows]
    names = [model.target, *model.features]
    complete = [i for i in range(len(person_ids or [])) if all(columns[n][i] is not None for n in names)]
    needed = max(policy.min_rows, policy.rows_per_parameter * (len(model.features) + 1))
    if len(complete) < needed:
        raise Refusal("MIN_ROWS", f"needs at least {needed} complete rows")
    X = np.array([[float(columns[n][i]) for n in model.features] for i in complete], dtype=float)
    target = columns[model.target]
    y = [target[i] for i in complete] if model.variables[model.target].categorical \
        else [float(target[i]) for i in complete]
    if not model.variables[model.target].categorical:
        check_columns(np.asarray(y, dtype=float)[:, None], [model.target], policy.min_cell, "training rows")
    X, rare = suppress_rare_columns(X, policy.min_cell)
    return TrainingRows(np.array([person_ids[i] for i in complete], dtype=np.int64), X, y,
                        [model.features[j] for j in rare])


def audit_round(config, run_id, server_round, stage: str, model: ModelSpec | None, decision: str,
                code: str | None, rows: int, released: dict | None) -> None:
    """One audit entry per round and stage (``train`` / ``evaluate``)."""
    if config is None:
        return
    try:
        AuditLog.for_config(config).append(
            request_id=f"flower:{run_id}:{server_round}:{stage}", requester="flower",
            spec_hash=model.digest() if model is not None else None,
            decision=decision, code=code, rows_touched=rows, released=released)
    except OSError:
        log.exception("audit append failed")


def suppress_small_groups(metrics: dict, config) -> dict:
    """Drop every ``<group>-*`` count of a group with ``0 < n < [policy] min_cell_count`` patients
    (zero-shot evaluation splits a site's patients into seen / held-out groups), so no small group's
    hit counts are released; the pooled figures then leave that site's group out."""
    policy = Policy.from_config(config)
    small = [key[:-2] for key, value in metrics.items() if key.endswith("-n") and policy.small(int(value))]
    return {k: v for k, v in metrics.items() if not any(k.startswith(group + "-") for group in small)}
