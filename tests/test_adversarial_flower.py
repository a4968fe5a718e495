"""Flower updates against a determined coordinator or researcher (issue 16, "Done means": Flower).

A site's answer to a Flower training message is a model update: for the logistic model's federated
Newton strategy, the mean gradient and Hessian at the parameters the ServerApp sent.  Each attack
below runs through the real ClientApp (``node.learn.clientapp.app``, real Flower messages on an
in-process grid) on the known-truth site of tests/adversarial.py, against two sites that differ
only in the protected value; the update (or the refusal) must be the same in both worlds, so it
determines nothing about that value.  Each test also shows the attack wins without the defence.

* a rare feature that one patient has (family 4 in training): the Hessian's row for it is that
  patient's features, its gradient entry the outcome.  The site holds such a feature constant
  (local suppression), so the update no longer depends on who has it;
* a rare 0/1 target: refused MIN_CELL;
* a tiny local dataset (a cohort of a few patients): refused MIN_ROWS before any update.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from sqlalchemy import delete, update

from cdm.db import create_cdm, open_engine
from cdm.learn import models as M
from cdm.learn.local_grid import LocalGrid
from cdm.learn.modelspec import parse_model_spec
from cdm.schema import tables
from node.audit import AuditLog
from node.learn.clientapp import app as client_app
from tests.adversarial import (
    AGE, CONCEPT, IDS, INDEX, POLICIES, RESPONSE, TARGET, VARIABLES, age_range, load_site, site_config,
)

LEARNING = '[learning]\nallowed_features = ["age", "condition:*"]\n'
OTHER = TARGET + 1  # in the second world, this patient has the rare code instead of the target


def _model(features, target="response", cohort=None) -> dict:
    return {"name": "attack", "cohort": {**INDEX, **(cohort or {})}, "variables": VARIABLES,
            "features": features, "target": target, "model": {"type": "logistic"},
            "training": {"strategy": "newton", "rounds": 1}}


def _world(tmp_path, name: str, policy: str, rare_patient: int = TARGET, flip_response: bool = False):
    folder = tmp_path / name
    config = site_config(folder, POLICIES[policy] + LEARNING)
    engine = open_engine(folder / "cdm.sqlite")
    create_cdm(engine, source_name=name)
    load_site(engine)
    co = tables["condition_occurrence"]
    with engine.begin() as c:
        if rare_patient != TARGET:
            c.execute(update(co).where(co.c.condition_concept_id == CONCEPT["rare"]).values(person_id=rare_patient))
        if flip_response:
            c.execute(delete(co).where(co.c.person_id == TARGET, co.c.condition_concept_id == CONCEPT["response"]))
    return config


def _train(config, model: dict, weights: np.ndarray) -> Message:
    """One Flower training message, as the ServerApp sends it, answered by the site's ClientApp."""
    grid = LocalGrid({1: (client_app, {"radfed-config": str(config.path)})})
    content = RecordDict({"arrays": ArrayRecord([weights]),
                          "config": ConfigRecord({"model-spec": parse_model_spec(model).canonical_json(),
                                                  "server-round": 1})})
    return list(grid.send_and_receive([Message(content, dst_node_id=1, message_type=MessageType.TRAIN)]))[0]


def _update(reply: Message) -> tuple:
    """What the coordinator reads of a reply: the arrays and metrics, or the error's reason."""
    if reply.has_error():
        return ("error", reply.error.reason)
    arrays = [a.tolist() for a in reply.content["arrays"].to_numpy_ndarrays()]
    return ("ok", json.dumps(arrays), json.dumps(dict(reply.content["metrics"]), sort_keys=True))


@pytest.mark.parametrize("policy", POLICIES)
def test_a_rare_feature_in_a_flower_update_does_not_release_its_patient(tmp_path, policy):
    """Features age + the rare code, Newton at w = 0.  World 1: the target has the rare code; world
    2: the next patient has it instead (another age, another outcome).  The two updates are the
    same: the rare column is held constant at both sites, and the audit names it."""
    model = _model(["age", "rare"])
    w = np.zeros(3)
    configs = [_world(tmp_path, name, policy, rare) for name, rare in (("truth", TARGET), ("other", OTHER))]
    replies = [_train(config, model, w) for config in configs]
    assert _update(replies[0])[0] == "ok", _update(replies[0])
    assert _update(replies[0]) == _update(replies[1])
    assert dict(replies[0].content["metrics"])["suppressed-features"] == 1
    assert _last_train(configs[0])["released"]["suppressed_features"] == ["rare"]  # the administrator sees it
    # the attack is real: the unsuppressed update's Hessian row gives the rare patient's age and outcome
    for patient in (TARGET, OTHER):
        X = M.design(np.column_stack([[AGE[int(i)] for i in IDS], (IDS == patient).astype(float)]))
        y = np.array([RESPONSE[int(i)] for i in IDS])
        _, grad, hess = M.logistic_stats(w, X, y, 0.0)
        assert hess[2, 1] / hess[2, 2] == pytest.approx(AGE[patient])  # the patient's age
        assert grad[2] / -hess[2, 2] * 0.25 + 0.5 == pytest.approx(RESPONSE[patient])  # and outcome


def _last_train(config) -> dict:
    """The site's audit entry of its last training message."""
    return [e for e in AuditLog.for_config(config).entries() if e["request_id"].endswith(":train")][-1]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_rare_target_is_refused(tmp_path, policy):
    """The rare code as the target: the gradient at w = 0 is half the difference between the rare
    patient's features and everyone else's.  Refused MIN_CELL with one answer in both worlds."""
    model = _model(["age"], target="rare")
    views = [_update(_train(_world(tmp_path, name, policy, rare), model, np.zeros(2)))
             for name, rare in (("truth", TARGET), ("other", OTHER))]
    assert views[0] == views[1] and views[0][0] == "error" and views[0][1].startswith("MIN_CELL")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_tiny_local_dataset_gives_no_update(tmp_path, policy):
    """A cohort of the target and two others (ages around the target's): an update over three rows
    is three patients' values.  Refused MIN_ROWS before training, whatever the target's outcome."""
    a = AGE[TARGET]
    model = _model(["age"], cohort={"inclusion": [age_range(a - 1, a + 1)]})
    configs = [_world(tmp_path, name, policy, flip_response=flip) for name, flip in (("truth", False), ("other", True))]
    views = [_update(_train(config, model, np.zeros(2))) for config in configs]
    assert views[0] == views[1] and views[0][0] == "error" and views[0][1].startswith("MIN_ROWS")
    entry = _last_train(configs[0])
    assert (entry["decision"], entry["code"], entry["rows_touched"], entry["released"]) == \
        ("refused", "MIN_ROWS", 0, None)
