"""Differentially private noise and the per-requester privacy budget (node/disclosure/noise.py), through the real
request path on a SQLite CDM.  Noise is checked by its distribution over many draws, never exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cdm.spec import parse_spec
from node import state
from node.disclosure import noise
from node.audit import AuditLog
from node.disclosure.noise import NoiseSettings, noise_scale, privatize
from node.disclosure.policy import Refusal
from node.state import state_engine
from test_policy_attacks import INDEX, N_PERSONS, TF_EDGES, VARIABLES, ask, load_persons, write_config

LAPLACE = '[policy]\ndifferencing_k = 0\n[policy.noise]\nmechanism = "laplace"\nepsilon_per_query = {eps}\n' \
          'budget_per_requester = {budget}\n'
DRAWS = 4000


def _spec(analysis):
    return parse_spec({"cohort": INDEX, "variables": VARIABLES, "analysis": analysis})


def test_laplace_and_gaussian_counts_have_the_documented_scale():
    count = _spec({"type": "count"})
    laplace = NoiseSettings("laplace", epsilon_per_query=0.5)
    draws = np.array([privatize(count, {"n": 1000}, {}, laplace)["n"] for _ in range(DRAWS)])
    assert draws.dtype.kind == "i" and abs(draws.mean() - 1000) < 0.3
    b = noise_scale("laplace", 1, 0.5, 0)
    assert b == 2.0 and abs(np.abs(draws - 1000).mean() - b) < 0.15 * b  # E|Laplace(b)| = b
    assert abs(draws.std() - math.sqrt(2) * b) < 0.1 * math.sqrt(2) * b
    gaussian = NoiseSettings("gaussian", epsilon_per_query=0.5, delta=1e-5)
    sigma = noise_scale("gaussian", 1, 0.5, 1e-5)
    assert sigma == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)
    draws = np.array([privatize(count, {"n": 1000}, {}, gaussian)["n"] for _ in range(DRAWS)])
    assert abs(draws.mean() - 1000) < 4 * sigma / math.sqrt(DRAWS) + 0.5
    assert abs(draws.std() - sigma) < 0.1 * sigma
    # post-processing: rounded and clipped at 0, so a true 0 is released as a non-negative integer
    zeros = np.array([privatize(count, {"n": 0}, {}, laplace)["n"] for _ in range(500)])
    assert zeros.min() >= 0 and zeros.mean() > 0 and (zeros > 0).any() and (zeros == 0).any()


def test_two_draws_differ_fresh_entropy_each_time():
    a = [noise.new_rng().laplace(0, 1) for _ in range(3)]
    assert len(set(a)) == 3


def test_crosstab_and_histogram_noise_only_released_cells(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, LAPLACE.format(eps=1.0, budget=1000))
    exact = ask(sqlite_cdm, write_config(tmp_path / "exact", "[policy]\ndifferencing_k = 0\n"),
                {"type": "crosstab", "by": ["sex", "mdm2"]})["result"]
    noisy = [ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex", "mdm2"]})["result"] for _ in range(40)]
    for r in noisy:
        assert r["suppressed"] == exact["suppressed"]  # suppression decided on the true counts
        assert [c["n"] is None for c in r["cells"]] == [c["n"] is None for c in exact["cells"]]
    for i, cell in enumerate(exact["cells"]):
        if cell["n"] is not None:
            released = np.array([r["cells"][i]["n"] for r in noisy])
            assert abs(released.mean() - cell["n"]) < 1.5 and released.std() > 0.3
    hist = ask(sqlite_cdm, config, {"type": "histogram", "variable": "tf", "edges": TF_EDGES})
    assert hist["result"]["counts"][:2] == [None, None] and isinstance(hist["result"]["counts"][2], int)


def test_summary_needs_clip_bounds_and_models_are_refused(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, LAPLACE.format(eps=1.0, budget=100))
    r = ask(sqlite_cdm, config, {"type": "summary", "variables": ["tf"]})
    assert r["code"] == "NOT_ALLOWED" and "clip" in r["message"] and r["result"] is None
    for analysis in ({"type": "crossprod", "variables": ["tf", "mdm2"]},
                     {"type": "glm_round", "family": "binomial", "outcome": "mdm2", "covariates": ["tf"], "beta": [0, 0]}):
        r = ask(sqlite_cdm, config, analysis)
        assert r["code"] == "NOT_ALLOWED" and "noise" in r["message"] and r["result"] is None
    assert noise.spent(state_engine(config), "mallory") == (0.0, 0.0, 0)  # refusals cost nothing
    # with bounds (by kind here) a summary runs on values clipped to [0, 30]: persons 31..40 count as 30
    clipped = write_config(tmp_path / "clipped", LAPLACE.format(eps=3.0, budget=1e6) + "clip = {measurement = [0, 30]}\n")
    runs = [ask(sqlite_cdm, clipped, {"type": "summary", "variables": ["tf"]})["result"]["variables"]["tf"]
            for _ in range(300)]
    x = np.minimum(np.arange(1, N_PERSONS + 1), 30)
    # epsilon 3 split over n, sum and sum_sq: scales 1, 30 and 900
    assert abs(np.mean([r["n"] for r in runs]) - N_PERSONS) < 0.4
    assert abs(np.mean([r["sum"] for r in runs]) - x.sum()) < 5 * 30 * math.sqrt(2) / math.sqrt(300)
    assert abs(np.std([r["sum"] for r in runs]) - 30 * math.sqrt(2)) < 0.3 * 30 * math.sqrt(2)
    assert min(r["sum_sq"] for r in runs) >= 0


def test_quantile_round_stays_monotone():
    spec = _spec({"type": "quantile_round", "variable": "tf", "thresholds": [5, 10, 15, 20, 25]})
    settings = NoiseSettings("laplace", epsilon_per_query=0.5)
    for _ in range(200):
        r = privatize(spec, {"n": 40, "n_le": [5, 10, 15, 20, 25], "suppressed": []}, {}, settings)
        assert all(0 <= a <= b <= r["n"] for a, b in zip(r["n_le"], r["n_le"][1:]))


def test_exceeding_the_budget_is_refused_before_running(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, LAPLACE.format(eps=1.0, budget=2.5))
    first = ask(sqlite_cdm, config, {"type": "count"})
    assert first["status"] == "ok" and first["privacy"]["epsilon_spent"] == 1.0
    small = ask(sqlite_cdm, config, {"type": "count"}, {**INDEX, "sex": ["F"], "age": {"max": 47}})
    # refused, and charged like a release: free refusals would be yes/no answers outside the budget
    assert small["code"] == "MIN_CELL" and small["privacy"]["epsilon_spent"] == 2.0
    third = ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex"]})
    assert third["status"] == "refused" and third["code"] == "BUDGET" and third["result"] is None
    assert "spent epsilon 2 of 2.5" in third["message"]
    assert noise.spent(state_engine(config), "mallory") == (2.0, 0.0, 2)
    assert ask(sqlite_cdm, config, {"type": "count"}, requester="trent")["status"] == "ok"  # budgets are per requester
    entries = AuditLog.for_config(config).entries()
    assert [e["code"] for e in entries] == [None, "MIN_CELL", "BUDGET", None]
    assert entries[2]["rows_touched"] == 0  # refused before the query ran
    assert entries[0]["released"] == first["result"] and entries[0]["privacy"]["epsilon"] == 1.0
    assert AuditLog.for_config(config).verify() == []


def test_charge_rechecks_the_budget_inside_its_transaction(tmp_path):
    config = write_config(tmp_path, LAPLACE.format(eps=0.4, budget=1.0))
    settings, engine = NoiseSettings.from_config(config), state_engine(config)
    spent = [noise.charge(engine, "eve", settings)["epsilon_spent"] for _ in range(2)]
    assert spent == pytest.approx([0.4, 0.8])
    noise.check_budget(engine, "eve", NoiseSettings("laplace", 0.2, budget_per_requester=1.0))  # 0.8 + 0.2 fits
    with pytest.raises(Refusal) as refused:
        noise.charge(engine, "eve", settings)  # a request that passed the pre-check in parallel
    assert refused.value.code == "BUDGET"
    assert noise.spent(engine, "eve")[0] == pytest.approx(0.8)
    gaussian = NoiseSettings("gaussian", 0.1, delta=1e-6, budget_per_requester=1.0)
    assert noise.charge(engine, "gus", gaussian)["delta_spent"] == 1e-6


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_parallel_charges_never_overspend(tmp_path, backend, request):
    """Twelve releases racing for a budget of five queries: exactly five are charged, on both databases."""
    from concurrent.futures import ThreadPoolExecutor

    state_url = request.getfixturevalue("pg_url") if backend == "postgresql" else str(tmp_path / "state.sqlite")
    config = write_config(tmp_path, LAPLACE.format(eps=1.0, budget=5.0) + f'[state]\nurl = "{state_url}"\n')
    settings, engine = NoiseSettings.from_config(config), state_engine(config)

    def attempt(_):
        try:
            return noise.charge(engine, "racer", settings)["epsilon_spent"]
        except Refusal as exc:
            return exc.code

    try:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(attempt, range(12)))
        assert outcomes.count("BUDGET") == 7 and noise.spent(engine, "racer") == (5.0, 0.0, 5)
    finally:  # leave the shared PostgreSQL database as empty as pg_url promises
        state.state_metadata.drop_all(engine)
        state._engines.pop(state_url, None)
        engine.dispose()
