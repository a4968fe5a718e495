"""Survival releases differenced by colluding researchers (issue 16: KM, Cox and concordance releases
and the site-wide auditor).

A Kaplan-Meier round releases, per bin, the number at risk, of events and of censorings over its
cohort.  Per-requester differencing stops *one* researcher from asking the same curve for the
cohort and for the cohort less one patient; two researchers who pool their results are the normal
case.  Alice asks the curve of everyone, Bob the curve (or a Cox round) of everyone but the target
(every age but the target's): the difference of the two curves is the target's own row -- whether
the target died, and in which bin.  The site-wide auditor records the cohort of every survival
round (its size is released at time 0, and every number of the round is a count or sum over it),
so Bob's cohort, which with Alice's determines one patient, is refused.  The protected value is
whether the target died: Bob's view is the same in two worlds that differ only in it.
"""

from __future__ import annotations

import pytest

from tests.adversarial import (
    AGE, DEATH_DAY, POLICIES, SURVIVAL, TARGET, age_range, ask_approved, load_survival, view, world,
)

KM = {"type": "km_round", "time": SURVIVAL, "bin_days": 7}
ALL_BUT_TARGET = {"inclusion": [{"kind": "any", "any": [age_range(hi=AGE[TARGET] - 1), age_range(lo=AGE[TARGET] + 1)]}]}
COX = {"type": "cox_round", "time": SURVIVAL, "covariates": ["age", "pfa"], "beta": [0.0, 0.0], "mode": "stratified"}
WORLDS = (("died", DEATH_DAY[TARGET]), ("alive", None))


def _world(tmp_path, policy: str, name: str, day):
    return world(tmp_path / name, POLICIES[policy], lambda engine: load_survival(engine, {TARGET: day}))


def _table(r: dict) -> dict:
    return r["result"]["groups"]["all"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("second", [KM, COX], ids=["km", "cox"])
def test_a_survival_round_over_the_cohort_less_one_patient_is_refused_for_a_colluder(tmp_path, policy, second):
    views = []
    for name, day in WORLDS:
        engine, config = _world(tmp_path, policy, name, day)
        alice = ask_approved(engine, config, KM, requester="alice", request_id="alice", locked=True)
        assert alice["status"] == "ok", alice
        bob = ask_approved(engine, config, second, ALL_BUT_TARGET, requester="bob", request_id="bob", locked=True)
        assert (bob["status"], bob["code"], bob["result"]) == ("refused", "DIFFERENCING", None), bob
        views.append(view(bob))
    assert views[0] == views[1]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_km_difference_gives_the_patient_away_when_answered(tmp_path, policy):
    """The attack is real: Alice's curve and Bob's, each answered at a site that released nothing
    before (two copies of the same data), differ by exactly the target's row."""
    for name, day in WORLDS:
        engine, config = _world(tmp_path, policy, f"alice-{name}", day)
        alice = _table(ask_approved(engine, config, KM, requester="alice", request_id="alice", locked=True))
        engine, config = _world(tmp_path, policy, f"bob-{name}", day)
        bob = _table(ask_approved(engine, config, KM, ALL_BUT_TARGET, requester="bob", request_id="bob", locked=True))
        assert sum(alice["at_risk"][:1]) - sum(bob["at_risk"][:1]) == 1  # the target's row, alone
        assert sum(alice["events"]) - sum(bob["events"]) == (1 if day is not None else 0)  # died or not
