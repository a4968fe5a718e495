"""Attack family 8 (issue 16): Kaplan-Meier releases must not give away single patients' days.

Known-truth sites (every person's survival day and fate is set by the test) are asked for KM rounds
with 1-day bins, by an ordinary researcher through the node's own execution path
(:func:`node.execute.run_request`, real SQLite CDMs): in plain mode at one site, and in secure mode
over three sites whose masked shares the real coordinator driver sums
(:func:`coordinator.secure.secure_round`).  Data shapes: censor-only days, single deaths that must
merge, ties on one day, a heavy censoring day, a thin tail, and random days.

The attacker's view is checked against the truth (:func:`leaks`): a release is a partition of time
into intervals ``(previous shown time, shown time]`` with their at-risk, events and censorings; it
gives a person away when a shown time (or span start) is a day fewer than k persons share, or an
interval holds fewer than k persons or 1..k-1 events, or an at-risk count is not the group size
minus what was released before (a change between shown times).  Under the default policy and
under deploy/examples/node.toml (whose ``min_bin_days = 7`` refuses 1-day bins; its 7-day bins are
checked the same way, a "day" being one bin), no release gives anyone away; the rule the nodes used
before this change does, on the same data (:func:`test_the_old_span_rule_gave_single_days_away`).
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from cdm import rounds
from cdm.analyses.km import DEFAULT_HORIZON, longer_horizon
from cdm.spec import MAX_DAYS
from coordinator.fanout import SiteReply
from coordinator.secure import Mode
from coordinator.stats import run_analysis
from node.execute import run_request
from node.secure import describe
from survival_sites import COHORT, write_persons
from tests.adversarial import POLICIES, site_config

K = 5  # min_cell_count under both policies
TIME = {"event": {"kind": "death"}}
VARIABLES = {"age_group": {"kind": "groups", "of": {"kind": "age"}, "cuts": [50], "labels": ["young", "old"]}}


def _frame(days, events) -> pd.DataFrame:
    n = len(days)
    return pd.DataFrame({"person_id": np.arange(1, n + 1), "time": np.asarray(days, float),
                         "event": np.asarray(events, int), "yob": np.where(np.arange(n) % 2, 1985, 1950)})


def shapes() -> pd.DataFrame:
    """Single deaths that must merge, censor-only days (single censorings), a tied death day (6),
    a heavy censoring day (5 with no death), then a thin tail: death 70, censorings 75 and 90."""
    deaths = [10, 12, 15, 21, 23] + [40] * 6 + [61, 62, 63, 64, 70]
    censored = [11, 30, 33, 50] + [60] * 5 + [75, 90]
    return _frame(deaths + censored, [1] * len(deaths) + [0] * len(censored))


def sparse(seed: int = 3) -> pd.DataFrame:
    """80 persons on random days (few ties), about 60% deaths."""
    rng = np.random.default_rng(seed)
    return _frame(rng.integers(1, 500, 80), rng.random(80) < 0.6)


def ties(seed: int = 5) -> pd.DataFrame:
    """90 persons: most on a few shared days (heavy days), the rest scattered singles."""
    rng = np.random.default_rng(seed)
    days = np.r_[rng.choice([30, 90, 180, 365, 400], 70), rng.integers(1, 720, 20)]
    return _frame(days, rng.random(90) < 0.5)


SHAPES = {"shapes": shapes, "sparse": sparse, "ties": ties}


def horizons(bin_days: int, max_days: int | None = None) -> set[float]:
    """Every time a tail may be shown at: the horizon ladder, fixed before any data is read."""
    out, h = set(), max_days or DEFAULT_HORIZON
    while True:
        out.add(float(math.ceil(h / bin_days) * bin_days))
        if h >= MAX_DAYS:
            return out
        h = longer_horizon(h)


def leaks(curve: dict, days: np.ndarray, events: np.ndarray, bin_days: int, k: int = K) -> list[str]:
    """What the released ``curve`` (times, at_risk, events, censored, maybe span) gives away about
    the persons with true ``days`` and ``events``; [] when nothing.  Also checks the release is
    true to the data (an untrue release would make the check meaningless)."""
    binned = rounds.bin_time(days, bin_days)
    problems, before = [], 0.0
    tails = horizons(bin_days)
    rows = list(zip(curve["times"], curve["at_risk"], curve["events"], curve["censored"]))
    for j, (t, n, d, c) in enumerate(rows):
        last = j == len(rows) - 1
        inside = (binned > before) & ((binned <= t) | last)  # the last row holds everyone left
        if n != int((binned > before).sum()):
            problems.append(f"at risk {n} at the interval after {before} is not the group minus what was released")
        if (d, c) != (int(events[inside].sum()), int((~events[inside]).sum())):
            problems.append(f"interval ({before}, {t}] released ({d}, {c}), truth differs")
        if inside.sum() < k or 0 < d < k:
            problems.append(f"interval ({before}, {t}] holds {inside.sum()} persons, {d} events")
        sharing = int((binned == t).sum())
        if sharing < k and not (last and t in tails):
            problems.append(f"shown time {t} is a day {sharing} person(s) share")
        if curve.get("span") and curve["span"][j][0] != before + bin_days:
            problems.append(f"span {curve['span'][j]} starts at a data-chosen time")
        before = t
    return problems


def _spec(analysis: dict) -> dict:
    return {"cohort": COHORT, "variables": VARIABLES, "analysis": analysis}


def _truth(df: pd.DataFrame, label: str | None):
    part = df if label in (None, "all") else df[(df.yob == 1985) == (label == "young")]
    return part.time.to_numpy(float), part.event.to_numpy(bool)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_plain_km_rounds_give_no_single_day_away(sqlite_cdm, tmp_path, policy, shape):
    df = SHAPES[shape]()
    write_persons(sqlite_cdm, df, end=None)
    config = site_config(tmp_path, POLICIES[policy])
    checked = 0
    for bin_days in (1, 7):
        for group in (None, "age_group"):
            analysis = {"type": "km_round", "time": TIME, "group": group, "bin_days": bin_days}
            r = run_request(sqlite_cdm, config, {"request_id": f"{bin_days}-{group}", "requester": "mallory",
                                                 "spec": _spec(analysis)})
            if policy == "example" and bin_days == 1:  # min_bin_days = 7: one-day bins are not answered
                assert r["code"] == "NOT_ALLOWED" and r["result"] is None
                continue
            assert r["status"] == "ok", r
            for label, curve in r["result"]["groups"].items():
                if curve is None:  # withheld: nothing released about the group's days
                    continue
                days, events = _truth(df, label)
                assert leaks(curve, days, events, bin_days) == [], (label, curve)
                checked += 1
    assert checked >= 2  # something was released and checked (not a vacuous pass)


def old_spans(at_risk: np.ndarray, events: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The span rule KM (and the secure Cox baseline) used before issue 16's family 8 was closed: a
    bin passes with >= k at risk and 0 or >= k events, a failing bin joins the next, a tail below k
    at risk or with too few events joins the span before; each span is shown at its last bin."""
    spans, i, m = [], 0, at_risk.shape[0]
    while i < m:
        if at_risk[i] < k:
            spans[-1][1] = m - 1
            break
        j, d = i, events[i]
        while 0 < d < k and j + 1 < m:
            j, d = j + 1, d + events[j + 1]
        spans.append([i, j])
        i = j + 1
    while len(spans) > 1 and 0 < events[spans[-1][0]:spans[-1][1] + 1].sum() < k:
        spans[-2][1] = spans.pop()[1]
    return spans


def test_the_old_span_rule_gave_single_days_away():
    """The defence off: the old rule shows a censor-only day at its own day and a merged tail at its
    last person's day; the same check finds the single days."""
    df = shapes()
    counts = rounds.km_counts(df.time, df.event, 1)["all"]
    times, at_risk, events, censored = (np.asarray(counts[k]) for k in ("times", "at_risk", "events", "censored"))
    spans = old_spans(at_risk, events, K)
    old = {"times": [times[b] for _, b in spans], "at_risk": [at_risk[a] for a, _ in spans],
           "events": [int(events[a:b + 1].sum()) for a, b in spans],
           "censored": [int(censored[a:b + 1].sum()) for a, b in spans]}
    found = leaks(old, df.time.to_numpy(float), df.event.to_numpy(bool), 1)
    assert any("shown time" in p and "1 person(s)" in p for p in found)
    assert 90.0 in old["times"]  # the tail's end: the last person's censoring day
    assert 30.0 in old["times"] and int((df.time == 30).sum()) == 1  # one censoring, shown at its own day


# -- secure mode: three sites, real masked shares, the coordinator's round driver ---------------------


class LocalSecureFederation:
    """The :class:`coordinator.fanout.Asker` interface over nodes run in this process: every round
    goes to each site's :func:`node.execute.run_request` (real CDM, real masks), and the real
    :func:`coordinator.secure.secure_round` sums the shares."""

    carries_extra = True

    def __init__(self, nodes: dict, spec: dict):
        self.nodes, self.spec, self.sites = nodes, spec, sorted(nodes)
        self.secure = Mode(True, "test", {s: describe(cfg)["secagg"]["certificate"] for s, (_, cfg) in nodes.items()})
        self.job_id, self.attempt, self.rounds = f"job-{uuid.uuid4().hex[:8]}", 1, []

    def __call__(self, analysis: dict, extra: dict | None = None) -> list[dict]:
        return self.secure.round(self, analysis, extra or {})

    def send(self, analysis: dict, extra: dict, mode: str = "plain") -> list[SiteReply]:
        replies = []
        for site in self.sites:
            engine, config = self.nodes[site]
            rid = f"{self.job_id}-{len(self.rounds)}-{site}"
            r = run_request(engine, config, {"request_id": rid, "requester": "mallory",
                                             "spec": {**self.spec, "analysis": analysis}, **extra})
            replies.append(SiteReply(site, rid, r["status"], r.get("code"), r.get("message", ""), r.get("result")))
        self.rounds.append({"analysis": analysis.get("type"), "mode": mode})
        return replies


def _secure_node(tmp_path, policy: str, name: str):
    from cdm.db import create_cdm, open_engine
    from cdm.wire import generate_key, private_key_pem

    folder = tmp_path / name
    folder.mkdir()
    (folder / "site.key").write_bytes(private_key_pem(generate_key()))
    bus = f'\n[bus]\nurl = "nats://127.0.0.1:4222"\nsigning_key = "{folder / "site.key"}"\n'
    engine = open_engine(folder / "cdm.sqlite")
    create_cdm(engine, source_name=name)
    return engine, site_config(folder, policy + bus, name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_secure_km_gives_no_single_day_away_and_stays_exact(tmp_path, policy, shape):
    df = SHAPES[shape]()
    nodes = {}
    for i, name in enumerate(("site-a", "site-b", "site-c")):
        engine, config = _secure_node(tmp_path, POLICIES[policy], name)
        part = df.iloc[i::3].assign(person_id=lambda f, i=i: f.person_id + 1000 * i)  # interleaved days
        write_persons(engine, part, end=None)
        nodes[name] = (engine, config)
    bin_days = 7 if policy == "example" else 1
    checked = 0
    for group in (None, "age_group"):
        analysis = {"type": "km", "time": TIME, "group": group, "bin_days": bin_days}
        result = run_analysis(analysis, LocalSecureFederation(nodes, _spec(analysis)))
        for label, curve in result["groups"].items():
            days, events = _truth(df, label)
            assert leaks(curve, days, events, bin_days) == [], (label, curve)
            # exact: the released survival is the pooled product-limit value at each released time
            ref = KaplanMeierFitter().fit(rounds.bin_time(days, bin_days), events)
            np.testing.assert_allclose(curve["survival"], ref.survival_function_at_times(curve["times"]).to_numpy(),
                                       rtol=1e-12)
            assert len(curve["coarsened"]) == len(curve["times"])
            checked += 1
    assert checked >= 2
    for engine, _ in nodes.values():
        engine.dispose()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bin_days", [1, 7])
def test_a_persons_day_can_move_within_its_interval_without_changing_the_release(shape, bin_days):
    """Two worlds that differ only in one person's day give one release (times, at risk, counts,
    spans, coarsened flags), for every person not on a shown day and every other day of their
    interval that crosses no shown-worthy day (a day >= k persons leave): what is released does not
    tell which of those days was theirs.  (:func:`cdm.analyses.km.released_rows` is the rule of the
    plain and the secure release alike; the secure survival values, computed on the exact pooled
    days, are discussed in docs/threat-model.md section 9.)"""
    from cdm.analyses.km import coarsen_km

    df = SHAPES[shape]()
    rng = np.random.default_rng(11)

    def release(days):
        counts = rounds.km_counts(days, df.event.to_numpy(), bin_days)["all"]
        return coarsen_km(counts, K, bin_days)

    days = df.time.to_numpy(float)
    seen = release(days)
    binned = rounds.bin_time(days, bin_days)
    moved = 0
    for p in range(len(days)):
        heavy = {float(t) for t, n in zip(*np.unique(binned, return_counts=True)) if n >= K}
        if binned[p] in heavy or binned[p] in seen["times"]:
            continue
        before = max([0.0] + [t for t in seen["times"] if t < binned[p]])
        after = min([t for t in seen["times"] if t >= binned[p]])
        for day in rng.integers(int(before) + 1, int(after) + 1, 6):
            new = rounds.bin_time(day, bin_days)
            crossed = [h for h in heavy if min(new, binned[p]) <= h <= max(new, binned[p])]
            if crossed or int((binned == new).sum()) + 1 >= K:
                continue
            other = days.copy()
            other[p] = day
            assert release(other) == seen, (p, days[p], day)
            moved += 1
    assert moved >= 20  # the worlds compared were many


@pytest.mark.parametrize("shape", ["shapes", "ties"])
def test_secure_cox_baseline_shows_no_single_day(tmp_path, shape):
    """The pooled Cox baseline (secure mode) is released by the same interval rule on the pooled days:
    every shown time is a day >= k pooled persons leave, or the horizon for the last step."""
    df = SHAPES[shape]()
    df = pd.concat([df, df.assign(person_id=df.person_id + 500, yob=1960)], ignore_index=True)  # >= 20 rows/site
    nodes = {}
    for i, name in enumerate(("site-a", "site-b", "site-c")):
        engine, config = _secure_node(tmp_path, "", name)
        write_persons(engine, df.iloc[i::3].assign(person_id=lambda f, i=i: f.person_id + 1000 * i), end=None)
        nodes[name] = (engine, config)
    analysis = {"type": "cox", "time": TIME, "covariates": ["age"], "mode": "pooled"}
    result = run_analysis(analysis, LocalSecureFederation(nodes, {**_spec(analysis),
                                                                  "variables": {"age": {"kind": "age"}}}))
    base = result["baseline"]
    assert base["times"], base
    sharing = df.time.value_counts()
    for j, t in enumerate(base["times"]):
        last = j == len(base["times"]) - 1
        assert sharing.get(t, 0) >= K or (last and t in horizons(1)), (t, sharing.get(t, 0))
    for engine, _ in nodes.values():
        engine.dispose()
