"""Attack families 1 and 6 (issue 16): linear combinations of three or more releases, by one
researcher or several colluding, and a suppressed cell recovered by someone who never asked for its
table.  The protected values: one patient's exact ADC and SUVmax, and a suppressed cell's count."""

from __future__ import annotations

import numpy as np
import pytest

from tests.adversarial import (
    ADC, AGE, IDS, MALE, POLICIES, SUBTYPE, TARGET, age_range, ask, determined, determined_persons, load_site,
    members, site_config,
)


@pytest.mark.parametrize("policy", POLICIES)
def test_four_overlapping_summaries_do_not_give_one_patients_values(sqlite_cdm, tmp_path, policy):
    """The issue's attack: summaries over four overlapping cohorts, each pair far apart, whose signed
    sum is one patient; then every age window a colluding pair of researchers can think of."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])
    a = AGE[TARGET]
    summary = {"type": "summary", "variables": ["adc", "suv"]}
    # R3 - R2 + R1 - R4 = {age == a}: R1 = age <= a, R2 = age >= 1 (all but nobody), R3 = [1, a] or >= a + 1,
    # R4 = everyone but the target... in the shape: age <= a; age >= 2; age in [2, a] or >= a + 9;
    # and the persons in [a + 1, a + 8] are asked for separately
    attempts = [
        ({"inclusion": [age_range(hi=a)]}, lambda i: AGE[i] <= a),
        ({"inclusion": [age_range(lo=a + 1)]}, lambda i: AGE[i] >= a + 1),
        ({"inclusion": [age_range(hi=a - 1)]}, lambda i: AGE[i] <= a - 1),
        ({"inclusion": [{"kind": "any", "any": [age_range(hi=a - 1), age_range(lo=a + 1)]}]},
         lambda i: AGE[i] != a),
        ({}, lambda i: True),
    ]
    rng = np.random.default_rng(16)
    for _ in range(24):  # and age windows at random, alternating between two colluding researchers
        lo, hi = sorted(int(x) for x in rng.integers(1, 62, 2))
        attempts.append(({"inclusion": [age_range(lo, hi)]}, lambda i, lo=lo, hi=hi: lo <= AGE[i] <= hi))
    released, refused = [], []
    for k, (cohort, truth) in enumerate(attempts):
        r = ask(sqlite_cdm, config, summary, cohort, requester=("mallory", "trudy")[k % 2], request_id=f"q{k}")
        if r["status"] == "ok" and r["result"]["variables"]["adc"]["n"] is not None:
            released.append(members(truth))
            # the release is what the truth says: the sums are exact (no noise in these policies)
            assert r["result"]["variables"]["adc"]["sum"] == pytest.approx(sum(ADC[i] for i in IDS if truth(int(i))))
        else:
            refused.append(r["code"] or "SUPPRESSED")
    all_sets = [members(t) for _, t in attempts]
    assert TARGET in determined_persons(all_sets)  # the attack is real: answered in full, it wins
    assert refused and set(refused) <= {"DIFFERENCING", "MIN_CELL", "SUPPRESSED"}
    assert determined_persons(released) == []  # no patient's value follows from what was released
    # nor any group of fewer than 5 patients the releases can tell apart
    patterns = {}
    for j in range(len(IDS)):
        patterns.setdefault(tuple(r[j] for r in released), []).append(j)
    for key, group in patterns.items():
        if any(key) and len(group) < 5:
            assert not determined(released, np.isin(np.arange(len(IDS)), group).astype(float))


@pytest.mark.parametrize("policy", POLICIES)
def test_a_suppressed_cell_stays_hidden_from_a_second_researcher(sqlite_cdm, tmp_path, policy):
    """Alice's crosstab sex x subtype over the young hides its small cells; Bob, who never saw that
    table, asks the counts that would difference one out.  Site-wide, so Bob's counts are refused."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])
    young = {"inclusion": [age_range(hi=20)]}
    table = ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex", "subtype"]}, young, requester="alice")
    assert table["status"] == "ok"
    hidden = [tuple(c["key"]) for c in table["result"]["cells"] if c["n"] is None]
    truth = {(s, t): members(lambda i, s=s, t=t: AGE[i] <= 20 and ("M" if MALE[i] else "F") == s and SUBTYPE[i] == t)
             for s in ("F", "M", "O") for t in ("PFA", "PFB")}
    small = [key for key in hidden if 0 < truth[key].sum() < 5]
    assert small, "the table must have a small cell to attack"
    shown = [truth[tuple(c["key"])] for c in table["result"]["cells"] if c["n"] is not None]
    # Bob: the young of each sex with a subtype, the young of each subtype, the young with PFA or PFB
    sub = {"PFA": {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]},
           "PFB": {"kind": "condition", "codes": ["RADFED:ependymoma_pfb"]}}
    bob = []
    for sex in ("F", "M"):
        for t in ("PFA", "PFB"):
            bob.append(({"inclusion": [age_range(hi=20), {"kind": "sex", "values": [sex]}, sub[t]]}, truth[(sex, t)]))
        bob.append(({"inclusion": [age_range(hi=20), {"kind": "sex", "values": [sex]},
                                   {"kind": "any", "any": [sub["PFA"], sub["PFB"]]}]},
                    truth[(sex, "PFA")] + truth[(sex, "PFB")]))
    for t in ("PFA", "PFB"):
        bob.append(({"inclusion": [age_range(hi=20), sub[t]]}, truth[("F", t)] + truth[("M", t)]))
    released = list(shown)
    for k, (cohort, vector) in enumerate(bob):
        r = ask(sqlite_cdm, config, {"type": "count"}, cohort, requester="bob", request_id=f"b{k}")
        if r["status"] == "ok":
            assert r["result"]["n"] == vector.sum()
            released.append(vector)
    assert any(determined(shown + [v for _, v in bob], truth[key]) for key in small)  # the attack is real
    for key in small:
        assert not determined(released, truth[key]), key
