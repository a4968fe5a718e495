"""Attack families 2, 3, 4 and 7 (issue 16): refusals as an oracle, quantile extremes, rare model
covariates, category keys.  A result's shape must not depend on the value it protects, so each test
runs the attack against two worlds that differ only in that value (or shows the answers are one
constant function of it) and asserts the attacker's view is identical -- or that the released
equations do not determine it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.adversarial import (
    ADC, AGE, IDS, MALE, POLICIES, RESPONSE, SUBTYPE, TARGET, age_range, ask, ask_approved, determined, load_site,
    members, site_config, view,
)

ONE_PERSON = {"inclusion": [age_range(AGE[TARGET], AGE[TARGET])]}  # only the target has this age
NOBODY = {"inclusion": [age_range(62, 62)]}                       # nobody is 62


@pytest.mark.parametrize("policy", POLICIES)
def test_refusals_do_not_read_a_patients_attributes(sqlite_cdm, tmp_path, policy):
    """Family 2: add one condition at a time to a one-patient cohort (sex, subtype, ADC ranges by
    bisection).  Whether the target has the attribute (count 1) or not (count 0), the answer is the
    same refusal: the 30 answers are one constant, so they carry no information."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])
    probes = [{"kind": "sex", "values": ["M"]}, {"kind": "sex", "values": ["F"]},
              {"kind": "condition", "codes": ["RADFED:ependymoma_pfa"]},
              {"kind": "condition", "codes": ["RADFED:ependymoma_pfb"]}]
    lo, hi = 0.0, 2000.0
    views, truths = [], []
    for k in range(30):
        if k < len(probes):
            cohort = {"inclusion": ONE_PERSON["inclusion"] + [probes[k]]}
            truth = {0: MALE[TARGET], 1: not MALE[TARGET], 2: SUBTYPE[TARGET] == "PFA", 3: SUBTYPE[TARGET] == "PFB"}[k]
        else:  # bisection on the target's ADC
            mid = (lo + hi) / 2
            cohort = {"inclusion": ONE_PERSON["inclusion"] + [
                {"kind": "measurement", "code": "RADFED:adc_mean", "value": {"max": mid}}]}
            truth = ADC[TARGET] <= mid
            lo, hi = (lo, mid) if truth else (mid, hi)
        r = ask(sqlite_cdm, config, {"type": "count"}, cohort, requester=("mallory", "trudy")[k % 2])
        views.append(view(r))
        truths.append(truth)
    assert True in truths and False in truths  # the probes asked both kinds of question
    assert len(set(views)) == 1 and views[0][:2] == ("refused", "MIN_CELL")  # one answer for all
    assert view(ask(sqlite_cdm, config, {"type": "count"}, NOBODY)) == views[0]  # nobody reads the same


def test_refusals_are_charged_to_the_privacy_budget(sqlite_cdm, tmp_path):
    """Family 2 with noise on: a refusal costs epsilon like a release, so bisection by refusals ends
    at the budget (and the site-wide budget bounds colluding researchers together)."""
    load_site(sqlite_cdm)
    noisy = ('[policy.noise]\nmechanism = "laplace"\nepsilon_per_query = 0.5\nbudget_per_requester = 2.0\n'
             'budget_site = 3.0\nclip = { age = [0, 100] }\n')
    config = site_config(tmp_path, noisy)
    codes = [ask(sqlite_cdm, config, {"type": "count"}, ONE_PERSON, requester="mallory")["code"] for _ in range(6)]
    assert codes == ["MIN_CELL"] * 4 + ["BUDGET"] * 2
    codes = [ask(sqlite_cdm, config, {"type": "count"}, ONE_PERSON, requester="trudy")["code"] for _ in range(4)]
    assert codes == ["MIN_CELL"] * 2 + ["BUDGET"] * 2  # the site's total (3.0) ends the pair's run
    assert "this site's privacy budget" in ask(sqlite_cdm, config, {"type": "count"}, requester="eve")["message"]


@pytest.mark.parametrize("policy", POLICIES)
def test_quantile_rounds_never_give_an_extreme(sqlite_cdm, tmp_path, policy):
    """Family 3: thresholds above the maximum and below the minimum, then bisection towards the
    maximum ADC.  No released count has fewer than k persons on either side, and the released
    counts do not determine which interval holds the maximum to better than k persons."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])
    values = np.array([ADC[i] for i in IDS])
    lo, hi = 0.0, 5000.0
    released = []
    for k in range(12):
        thresholds = sorted({lo, hi, (lo + hi) / 2, float(values.max()) + 1, float(values.min()) - 1})
        r = ask(sqlite_cdm, config, {"type": "quantile_round", "variable": "adc", "thresholds": thresholds},
                requester=("mallory", "trudy")[k % 2], request_id=f"q{k}")
        assert r["status"] == "ok"
        for t, n_le in zip(thresholds, r["result"]["n_le"]):
            if n_le is not None:
                assert 5 <= n_le <= len(values) - 5, (t, n_le)
                assert n_le == int((values <= t).sum())
                released.append(members(lambda i, t=t: ADC[i] <= t))
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (values <= mid).sum() < len(values) else (lo, mid)
    top = int(IDS[values.argmax()])
    assert not determined(released, members(lambda i: i == top))
    # the top k-1 persons stay together: no released count separates any of them from the others
    order = IDS[np.argsort(-values)]
    assert not any(determined(released, members(lambda i, g=set(order[:m].tolist()): i in g)) for m in range(1, 5))


@pytest.mark.parametrize("policy", POLICIES)
def test_a_rare_covariate_does_not_release_its_patient(sqlite_cdm, tmp_path, policy):
    """Family 4: a 0/1 covariate only the target has, in crossprod and GLM rounds (the row limits are
    met by everyone else).  Refused whatever the rows; without it the same model is answered."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])

    def run(analysis):
        return ask_approved(sqlite_cdm, config, analysis, requester="mallory")

    rare = run({"type": "crossprod", "variables": ["rare", "age", "response"]})
    assert (rare["status"], rare["code"], rare["result"]) == ("refused", "MIN_CELL", None)
    assert "'rare'" in rare["message"]
    glm = run({"type": "glm_round", "family": "binomial", "outcome": "response", "covariates": ["age", "rare"],
               "beta": [0.0, 0.0, 0.0]})
    assert (glm["status"], glm["code"], glm["result"]) == ("refused", "MIN_CELL", None)
    common = run({"type": "crossprod", "variables": ["pfa", "age", "response"]})  # 20 of 60 have PFA
    assert common["status"] == "ok", common
    cross = np.array(common["result"]["cross"])
    assert cross[0, 1] == sum(AGE[i] for i in IDS if SUBTYPE[i] == "PFA")
    assert cross[0, 2] == sum(RESPONSE[i] for i in IDS if SUBTYPE[i] == "PFA")


@pytest.mark.parametrize("policy", POLICIES)
def test_crosstab_categories_do_not_depend_on_the_data(sqlite_cdm, tmp_path, policy):
    """Family 7: a crosstab sex x subtype over an age bin that holds only the target used to list
    only the categories present (male, PFB).  Now every category of the spec is listed, all hidden,
    exactly as for an age bin that holds nobody: the two worlds look the same."""
    load_site(sqlite_cdm)
    config = site_config(tmp_path, POLICIES[policy])
    table = {"type": "crosstab", "by": ["sex", "subtype"]}
    one = ask(sqlite_cdm, config, table, ONE_PERSON)
    none = ask(sqlite_cdm, config, table, NOBODY, requester="trudy")
    assert one["status"] == "ok" and view(one) == view(none)
    keys = [tuple(c["key"]) for c in one["result"]["cells"]]
    assert sorted(keys) == sorted((s, t) for s in ("F", "M", "O") for t in ("PFA", "PFB"))
    assert all(c["n"] is None for c in one["result"]["cells"])
    # a raw measurement has no categories fixed by the spec: it must be binned
    raw = ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex", "adc"]})
    assert raw["code"] == "BAD_SPEC" and "bins" in raw["message"]  # the spec says so before any data is read
    binned = ask(sqlite_cdm, config, {"type": "crosstab", "by": ["adc"], "bins": {"adc": [0, 900, 2000]}})
    assert [c["key"] for c in binned["result"]["cells"]] == [["[0.0, 900.0)"], ["[900.0, 2000.0)"], ["above"], ["below"]]
