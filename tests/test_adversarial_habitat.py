"""Habitat rounds against a determined researcher (issue 16, "Done means": habitat rounds).

A ``habitat_round`` is a weighted logistic round over *biopsies*: its score and information at
``beta`` are sums over biopsies of the variant outcome, weighted by habitat and registration
distance.  A patient has several biopsies, so counting rows is not counting persons: on the
known-truth site (tests/adversarial.py, :func:`load_biopsies`) the target alone has six biopsies in
``habitat_rare`` -- more than k rows, one person.  The protected value is whether the target's
tumour carries TP53 there.  Each attack runs against two sites that differ only in it; the view must
be the same in both.
"""

from __future__ import annotations

import numpy as np
import pytest

from cdm import rounds
from tests.adversarial import (
    HABITATS, POLICIES, RARE_BIOPSIES, ask, ask_approved, audit_entry, load_biopsies, view, world,
)

HABITAT = {"type": "habitat_round", "gene": "TP53", "variant_type": "snv", "habitats": HABITATS}


def _worlds(tmp_path, policy: str) -> list[tuple]:
    return [world(tmp_path / name, POLICIES[policy], lambda engine, positive=positive: load_biopsies(engine, positive))
            for name, positive in (("positive", True), ("negative", False))]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_habitat_one_patient_has_is_refused(tmp_path, policy):
    """Six biopsies of one patient in a habitat nobody else has: before, the column had six rows on
    its side and passed; its score entry at beta = 0 is the sum of that patient's weighted outcomes
    minus half their weights, i.e. the patient's TP53 status.  Refused MIN_CELL, counted in persons,
    with one answer in both worlds."""
    views = []
    for engine, config in _worlds(tmp_path, policy):
        r = ask_approved(engine, config, {**HABITAT, "beta": [0.0, 0.0, 0.0]}, request_id="rare", locked=True)
        assert (r["status"], r["code"], r["result"]) == ("refused", "MIN_CELL", None), r
        assert "'habitat_rare'" in r["message"] and "persons" in r["message"]
        views.append(view(r))
    assert views[0] == views[1]
    # the attack is real: the kernel's score entry for the rare habitat gives the target's status
    weights = rounds.habitat_weight(1.0 + np.arange(RARE_BIOPSIES, dtype=float), np.ones(RARE_BIOPSIES))
    X = np.column_stack([np.ones(RARE_BIOPSIES), np.zeros(RARE_BIOPSIES), np.ones(RARE_BIOPSIES)])
    scores = [rounds.glm_binomial(np.full(RARE_BIOPSIES, y), X, [0.0, 0.0, 0.0], weights)["gradient"][2]
              for y in (1.0, 0.0)]
    assert scores[0] > 0 > scores[1]


@pytest.mark.parametrize("policy", POLICIES)
def test_habitat_rounds_are_locked_and_common_habitats_answered(tmp_path, policy):
    """beta chosen by a researcher (or substituted by a coordinator) is refused ROUND_LOCKED before a
    row is read, identically in both worlds; the first round of the two common habitats is answered
    (utility) and does not depend on the rare habitat's biopsies (they are not in it)."""
    common = {**HABITAT, "habitats": HABITATS[:2]}
    views, answers = [], []
    for engine, config in _worlds(tmp_path, policy):
        r = ask(engine, config, {**common, "beta": [-40.0, 80.0]}, request_id="crafted", locked=True)
        assert (r["status"], r["code"], r["result"]) == ("refused", "ROUND_LOCKED", None)
        assert audit_entry(config, "crafted")["rows_touched"] == 0
        views.append(view(r))
        first = ask_approved(engine, config, {**common, "beta": [0.0, 0.0]}, request_id="first", locked=True)
        assert first["status"] == "ok", first
        answers.append(view(first))
    assert views[0] == views[1] and answers[0] == answers[1]
    assert answers[0][3]["excluded"]["other_habitat"] == RARE_BIOPSIES
