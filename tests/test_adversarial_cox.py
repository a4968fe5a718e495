"""Cox rounds against a determined researcher or coordinator (issue 16, "Done means": Cox rounds).

A ``cox_round`` releases the log partial likelihood, score and information at the round's ``beta``
(stratified), or the risk-set sums at every time (pooled).  Three ways to make them give one
patient's values away, each tried on the known-truth site (tests/adversarial.py) whose patients'
death days are known:

* a researcher *chooses* ``beta`` (family 5 for Cox: a large coefficient on age makes every risk
  set's weighted mean the oldest member's covariates);
* a coordinator keeps an honest lock (the pooled fits of the earlier rounds) but substitutes another
  ``beta`` in the round;
* a rare covariate that one patient has (family 4 for Cox), and daily event times in pooled mode.

The protected value is the target's death day.  Each attack runs against two sites that differ only
in it: the attacker's view (status, code, message, result) must be the same in both worlds -- a
constant function of the protected value determines nothing -- and, for the crafted rounds, the
node must refuse before it reads a row (audit log: rows touched 0).  Where the defence is off
(``[secure] lock_rounds = false``) or the release is computed anyway, the same attack tells the two
worlds apart: the attack is real.
"""

from __future__ import annotations

import numpy as np
import pytest

from cdm import newton, rounds
from tests.adversarial import (
    AGE, DEATH_DAY, IDS, POLICIES, SURVIVAL, TARGET, ask, ask_approved, audit_entry, load_survival, site_config,
    view, world,
)

COX = {"type": "cox_round", "time": SURVIVAL, "covariates": ["age", "pfa"], "mode": "stratified",
       "ties": "breslow"}
OTHER_DAY = DEATH_DAY[TARGET] + 200  # the second world: the target died 200 days later


def _worlds(tmp_path, policy: str) -> list[tuple]:
    """(CDM engine, node config) of two sites that differ only in the target's death day."""
    return [world(tmp_path / name, POLICIES[policy], lambda engine, day=day: load_survival(engine, {TARGET: day}))
            for name, day in (("truth", DEATH_DAY[TARGET]), ("other", OTHER_DAY))]


def _crafted(engine, config, beta, request_id, **fields):
    return ask(engine, config, {**COX, "beta": beta}, requester="mallory", request_id=request_id, locked=True,
               **fields)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_researcher_cannot_choose_beta(tmp_path, policy):
    """beta = (3, 0): exp(3 * age) puts nearly all of every risk set's weight on its oldest member,
    so the score's terms are single patients' ages at their death days.  Over the bus every round is
    locked: refused ROUND_LOCKED before a row is read, the same answer whatever the target's day."""
    worlds = _worlds(tmp_path, policy)
    views = []
    for engine, config in worlds:
        r = _crafted(engine, config, [3.0, 0.0], "crafted")
        assert (r["status"], r["code"], r["result"]) == ("refused", "ROUND_LOCKED", None)
        assert audit_entry(config, "crafted")["rows_touched"] == 0  # refused before the cohort ran
        views.append(view(r))
    assert views[0] == views[1]
    # the attack is real: a site that unlocked its rounds answers, and the answer depends on the day
    unlocked = [ask_approved(engine, site_config(config.path.parent, POLICIES[policy] + "[secure]\nlock_rounds = false\n"),
                             {**COX, "beta": [3.0, 0.0]}, request_id="open", locked=True)
                for engine, config in worlds]
    assert all(u["status"] == "ok" for u in unlocked), unlocked
    assert unlocked[0]["result"]["gradient"] != unlocked[1]["result"]["gradient"]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_coordinator_cannot_substitute_the_rounds_beta(tmp_path, policy):
    """The first round (beta = 0) is answered; the coordinator builds the honest lock from the fit
    but sends another beta with it.  Refused before a row is read, identically in both worlds; the
    beta the algorithm proposes from that lock is answered (utility kept)."""
    views = []
    for engine, config in _worlds(tmp_path, policy):
        first = ask_approved(engine, config, {**COX, "beta": [0.0, 0.0]}, request_id="round-1", locked=True)
        assert first["status"] == "ok", first
        machine = newton.Newton(2)
        machine.observe(first["result"])
        lock = machine.lock([first["result"]])
        honest = machine.propose()
        for k, substitute in enumerate(([3.0, 0.0], [float(honest[0]) * 50, float(honest[1])])):
            r = _crafted(engine, config, substitute, f"sub-{k}", lock=lock)
            assert (r["status"], r["code"], r["result"]) == ("refused", "ROUND_LOCKED", None)
            assert audit_entry(config, f"sub-{k}")["rows_touched"] == 0
            views.append(view(r))
        second = ask_approved(engine, config, {**COX, "beta": honest.tolist()}, request_id="round-2", locked=True,
                              lock=lock)
        assert second["status"] == "ok", second
    assert views[:2] == views[2:]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_rare_covariate_in_a_cox_model_does_not_release_its_patient(tmp_path, policy):
    """A 0/1 covariate only the target has: its score entry at beta = 0 would be the target's event
    indicator minus the share of each risk set the target is in, and its information entry gives
    the number of risk sets the target is in, i.e. the death day.  Refused MIN_CELL in both worlds
    with one answer; the same model without the rare covariate is answered."""
    rare = {**COX, "covariates": ["age", "rare"], "beta": [0.0, 0.0]}
    views = []
    for engine, config in _worlds(tmp_path, policy):
        r = ask_approved(engine, config, rare, request_id="rare", locked=True)
        assert (r["status"], r["code"], r["result"]) == ("refused", "MIN_CELL", None)
        assert "'rare'" in r["message"]
        views.append(view(r))
    assert views[0] == views[1]
    # the attack is real: the kernel's information entry for the rare column counts the target's risk sets
    ages = np.array([AGE[int(i)] for i in IDS], dtype=float)
    for day in (DEATH_DAY[TARGET], OTHER_DAY):
        stop = np.array([DEATH_DAY.get(int(i), 4000) if i != TARGET else day for i in IDS], dtype=float)
        event = np.array([int(i) in DEATH_DAY for i in IDS])
        X = np.column_stack([ages, (IDS == TARGET).astype(float)])
        views.append(-rounds.cox_stratified(None, stop, event, X, [0.0, 0.0], "breslow")["hessian"][1][1])
    assert views[2] != views[3]  # answered, the released information would tell the two days apart


@pytest.mark.parametrize("policy", POLICIES)
def test_pooled_cox_with_daily_times_is_refused(tmp_path, policy):
    """Pooled mode releases the risk-set sums at every time; with one death a day, consecutive
    ``s1`` differ by exactly one patient's covariates (and the times are the death days).  Refused
    MIN_CELL in both worlds with one answer."""
    pooled = {**COX, "mode": "pooled", "beta": [0.0, 0.0]}
    views = []
    for engine, config in _worlds(tmp_path, policy):
        r = ask_approved(engine, config, pooled, request_id="pooled", locked=True)
        assert (r["status"], r["code"], r["result"]) == ("refused", "MIN_CELL", None)
        views.append(view(r))
    assert views[0] == views[1]
    # the attack is real: the kernel's sums at the death days give the target's day and age
    stop = np.array([DEATH_DAY.get(int(i), 4000) for i in IDS], dtype=float)
    event = np.array([int(i) in DEATH_DAY for i in IDS])
    X = np.column_stack([[AGE[int(i)] for i in IDS], np.zeros(len(IDS))])
    sums = rounds.cox_risk_sums(np.zeros(len(IDS)), stop, event, X, [0.0, 0.0], "breslow")
    times = np.asarray(sums["times"])
    at = int(np.searchsorted(times, DEATH_DAY[TARGET]))
    s1 = np.asarray(sums["s1"]).reshape(len(times), -1)[:, 0]
    assert times[at] == DEATH_DAY[TARGET] and s1[at] - s1[at + 1] == AGE[TARGET]
