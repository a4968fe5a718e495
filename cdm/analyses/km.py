"""Pooled Kaplan-Meier curves and the log-rank test from one ``km_round``.

Every site reports, per group and per time bin on the shared grid (``ceil(t / bin_days) * bin_days``),
the number at risk, events and censored (:func:`cdm.rounds.km_counts`).  At-risk counts are step
functions of time: at a pooled time where a site reported nothing, its number at risk is the one
at its next reported time (0 past its last).  Summed counts give exactly the pooled data's

* Kaplan-Meier (1958) product-limit estimate ``S(t) = prod (1 - d/n)`` with Greenwood's variance
  and the exponential ("log-log") 95% interval, as lifelines ``KaplanMeierFitter``;
* log-rank test (Mantel 1966; Peto & Peto 1972) over k groups, chi-square with k - 1 df, as lifelines
  ``logrank_test`` / ``multivariate_logrank_test`` on the binned times.

A group a site suppressed entirely (``null``) is left out of that group's pooled curve, which then
says ``complete: false`` and names the site.

Site half (``km_round``): survival times from frames of its own (:mod:`cdm.round_frames`), counted
on the grid (:func:`cdm.rounds.km_counts`), then released by the same rule the pooled (secure)
release applies to the pooled bins (:func:`release_intervals`, :func:`released_rows`).  A group
that cannot pass as a whole (fewer members than the minimum, or 1..min-1 events in total) is
released as ``null`` and listed in ``suppressed``; a hidden group smaller than the minimum takes the
next smallest group with it (:func:`hide_groups`).

What a release guarantees (issue 16, attack family 8; docs/threat-model.md).  Let k be the
minimum cell count (the site's own in plain mode, the strictest site's on the pooled bins in
secure mode) and call a grid bin (``bin_days`` wide; one day with ``bin_days: 1``) the "day".  Per
group, the release is a partition of the time axis into intervals ``(previous shown time, shown
time]``, each with its number at risk at its start, its events and its censorings:

1. Every shown time that ends an interval is a bin that **at least k persons leave** (events plus
   censorings in that bin alone).  So a shown time never tells that fewer than k persons share a
   day, and a bin with censorings but no events, or with too few persons, is never shown at its
   own time: it joins the next interval that ends at such a bin.
2. Every interval holds **at least k persons**, and its events are **0 or at least k**.
3. The persons after the last such interval (the tail) are one more interval, shown at a
   **horizon fixed before the data is read** (:func:`tail_time`: the spec's ``max_days``, else
   :data:`DEFAULT_HORIZON`, or in secure mode the pooled grid's end, moved up the ladder x4 only as
   far as the tail's events need), never at a person's day; it too needs >= k persons and 0 or
   >= k events, else it absorbs the interval before it.  A span starts one bin after the previous
   shown time (the first at ``bin_days``): no span start is a person's day either.
4. The numbers at risk are the group size minus everything released before: they carry nothing
   beyond the interval counts, so no at-risk change falls between two shown times, and each
   change is an interval's >= k persons.
5. What the rule reveals by *not* ending an interval earlier is only that some bins hold fewer
   than k persons, or that the events so far are 1..k-1: statements that place no person on a day.

So no released time, span end, at-risk change or count places a person's event or censoring in a
bin that fewer than k persons share.  Not covered here: within an interval, which of its >= k
persons had the event (a 1..k-1 censoring count inside an interval with >= k persons is released,
as in every KM table: homogeneity is not protected); small subgroup counts formed by differences
between *different* releases (two cohorts or groupings whose intervals interleave: their windows
still end at shown times, days k persons share, but the counts in them can be 1..k-1; KM is not in
the site-wide auditor, docs/threat-model.md); and, in
secure mode, what the exact values carry: the survival (and its interval) at a shown time depends
on the order of events and censorings inside the interval (an order, not a day), and the log-rank
statistic is one number computed on the exact pooled days (it releases no time).

Exactness.  With k = 1 every bin anybody leaves is its own interval: the release is the full
binned table (lifelines' event table on the binned times).  In secure mode the curve and the
log-rank test are computed on the full pooled grid, so the value at every shown time is the exact
pooled one; a row that stands for persons who left before its shown time is ``coarsened`` (its at
risk is at the start of its span, its counts cover the whole span).  In plain mode the sites'
intervals differ, so the pooled curve is exact only up to the first coarsened time, and says so.
"""

from __future__ import annotations

import math

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.analyses.inference import Z95
from cdm.analyses.kind import Kind
from cdm.analyses.session import Session, StatsError, array

KEYS = ("at_risk", "events", "censored")


def step_at(times: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """A left-continuous step function known at ``times``: the value at the first time ``>= query``."""
    if times.shape[0] == 0:
        return np.zeros(query.shape[0])
    at = np.searchsorted(times, query, side="left")
    return np.where(at < times.shape[0], values[np.minimum(at, times.shape[0] - 1)], 0.0)


def _site_groups(result: dict, site: str) -> dict[str, dict]:
    groups = result.get("groups", result)
    if not isinstance(groups, dict):
        raise StatsError(f"{site}: km_round result has no groups")
    out = {}
    for label, g in groups.items():
        if g is None:  # the site suppressed this whole group (too few persons)
            out[str(label)] = None
            continue
        if not isinstance(g, dict) or "times" not in g:
            continue
        times = array(g, "times", site, f"km_round group {label!r}")
        m = times.shape[0]
        if np.any(np.diff(times) <= 0):
            raise StatsError(f"{site}: km_round times of group {label!r} are not strictly increasing")
        out[str(label)] = {"times": times, **{k: array(g, k, site, f"km_round group {label!r}", (m,)) for k in KEYS},
                           "merged": [list(span) for span in g.get("merged") or []]}
    return out


def pool_groups(results: dict[str, dict]) -> dict[str, dict]:
    """Per group: pooled times, at risk, events and censored over all sites."""
    per_site = {site: _site_groups(r, site) for site, r in results.items()}
    labels = sorted({g for groups in per_site.values() for g in groups})
    pooled = {}
    for label in labels:
        parts = [groups[label] for groups in per_site.values() if groups.get(label) is not None]
        if not parts:
            continue
        suppressed_at = sorted(site for site, groups in per_site.items() if label in groups and groups[label] is None)
        times = np.unique(np.concatenate([p["times"] for p in parts]))
        out = {"times": times, **{k: np.zeros(times.shape[0]) for k in KEYS}, "suppressed_at": suppressed_at}
        # a site that merged bins (plain mode) put events at a later time than they happened: from
        # the first merged bin on, the pooled product-limit curve is not exact (said per time point)
        starts = [span[0] for p in parts for span in p.get("merged", [])]
        out["merged_by"] = sorted(site for site, groups in per_site.items()
                                  if (groups.get(label) or {}).get("merged"))
        out["coarsened"] = times >= min(starts) if starts else np.zeros(times.shape[0], dtype=bool)
        for part in parts:
            out["at_risk"] += step_at(part["times"], part["at_risk"], times)
            exact = np.isin(times, part["times"])
            where = np.searchsorted(part["times"], times[exact])
            out["events"][exact] += part["events"][where]
            out["censored"][exact] += part["censored"][where]
        pooled[label] = out
    return pooled


def kaplan_meier(at_risk: np.ndarray, events: np.ndarray) -> dict:
    """Product-limit survival, Greenwood variance and lifelines' exponential 95% interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(np.where(at_risk > 0, 1 - events / np.where(at_risk > 0, at_risk, 1), 1.0))
        greenwood = np.cumsum(np.where(at_risk > events, events / (at_risk * (at_risk - events)), 0.0))
        log_s = np.log(survival)
        lower = np.exp(-np.exp(np.log(-log_s) - Z95 * np.sqrt(greenwood) / log_s))
        upper = np.exp(-np.exp(np.log(-log_s) + Z95 * np.sqrt(greenwood) / log_s))
    lower = np.where(np.isfinite(lower), lower, np.where(survival >= 1, 1.0, 0.0))
    upper = np.where(np.isfinite(upper), upper, np.where(survival >= 1, 1.0, 0.0))
    return {"survival": survival, "variance": survival ** 2 * greenwood, "ci_lower_95": lower, "ci_upper_95": upper}


def median_survival(times: np.ndarray, survival: np.ndarray) -> float | None:
    """The first time the curve is at or below 0.5 (lifelines' convention); None if it never is."""
    below = np.nonzero(survival <= 0.5)[0]
    return float(times[below[0]]) if below.size else None


def logrank(groups: dict[str, dict]) -> dict | None:
    """k-sample log-rank statistic ``(O - E)' V^-1 (O - E)`` over the first k - 1 groups."""
    labels = sorted(groups)
    k = len(labels)
    if k < 2:
        return None
    times = np.unique(np.concatenate([groups[g]["times"] for g in labels]))
    n = np.stack([step_at(groups[g]["times"], groups[g]["at_risk"], times) for g in labels])  # k x T
    d = np.zeros_like(n)
    for i, g in enumerate(labels):
        exact = np.isin(times, groups[g]["times"])
        d[i, exact] = groups[g]["events"][np.searchsorted(groups[g]["times"], times[exact])]
    n_all, d_all = n.sum(axis=0), d.sum(axis=0)
    use = (n_all > 0) & (d_all > 0)
    n, d, n_all, d_all = n[:, use], d[:, use], n_all[use], d_all[use]
    expected = (d_all * n / n_all).sum(axis=1)
    observed = d.sum(axis=1)
    factor = np.where(n_all > 1, d_all * (n_all - d_all) / np.where(n_all > 1, n_all - 1, 1), 0.0) / n_all
    share = n / n_all
    v = np.einsum("t,it->i", factor, n)[:, None] * np.eye(k) - np.einsum("t,it,jt->ij", factor * n_all, share, share)
    diff = (observed - expected)[:-1]
    from scipy.stats import chi2  # lazily: the node imports this module for its site half

    try:
        statistic = float(diff @ np.linalg.solve(v[:-1, :-1], diff))
    except np.linalg.LinAlgError:
        return {"groups": labels, "statistic": None, "df": k - 1, "p": None,
                "note": "variance matrix singular (a group without events at shared times?)"}
    return {"groups": labels, "observed": observed.tolist(), "expected": expected.tolist(),
            "statistic": statistic, "df": k - 1, "p": float(chi2.sf(statistic, k - 1))}


DEFAULT_HORIZON = 3660  # days (ten years and a bit): the first horizon when the spec sets no max_days
HORIZON_GROWTH = 4      # a horizon that is too short is multiplied by this (up to S.MAX_DAYS)


def longer_horizon(days: int) -> int:
    """The next horizon of the ladder ``DEFAULT_HORIZON`` (or the spec's ``max_days``) x 4, x 16 ..:
    horizons are fixed before the data is read; the data only decides how far up the ladder to go."""
    return min(days * HORIZON_GROWTH, S.MAX_DAYS)


def tail_time(base: int, bin_days: int, after: float, last_event: float) -> float:
    """Where a merged tail is shown: the horizon ``base`` (the spec's ``max_days`` or
    :data:`DEFAULT_HORIZON`; in secure mode the pooled grid's end), moved up its ladder
    (:func:`longer_horizon`) until it lies after the last released time ``after`` and at or after
    the tail's last event.  Never a person's day; S at it is exact (no event after it)."""
    t = base
    while (t <= after or t < last_event) and t < S.MAX_DAYS:
        t = longer_horizon(t)
    return float(max(math.ceil(t / bin_days) * bin_days, after + bin_days))


def release_intervals(leaving: np.ndarray, events: np.ndarray, size: int, min_cell: int) -> tuple[list[int], bool] | None:
    """The released intervals of one group on its grid bins (ascending; ``leaving`` = events +
    censored per bin; ``size`` persons in all, those after the last bin included).

    Returns ``(ends, tail)``: the bin index each released interval ends at (it starts after the
    previous end) and whether a tail interval follows the last end; None when the group is
    withheld.  An interval ends at a bin only if **that bin alone holds at least min_cell persons**
    (so the end time is a day at least k persons share) and the interval's events are 0 or at
    least min_cell (it then holds >= k persons too); the first such bin ends it.  Persons after the
    last end form the tail, released at a horizon (:func:`tail_time`) if it holds >= k persons and
    0 or >= k events, else merged with the interval before it (and so on).  None when even the
    whole group fails (fewer than k persons, or 1..k-1 events)."""
    k, ends, d = max(int(min_cell), 1), [], 0
    for i in range(leaving.shape[0]):
        d += events[i]
        if leaving[i] >= k and (d == 0 or d >= k):
            ends.append(i)
            d = 0

    def rest(after: int) -> tuple[int, int]:  # persons and events after bin ``after`` (-1: all)
        return int(size - leaving[:after + 1].sum()), int(events[after + 1:].sum())

    while True:
        persons, deaths = rest(ends[-1] if ends else -1)
        if persons == 0 or (persons >= k and (deaths == 0 or deaths >= k)):
            break
        if not ends:
            return None
        ends.pop()
    if not ends and persons == 0:
        return None
    return ends, persons > 0


def released_rows(times: np.ndarray, at_risk_size: int, events: np.ndarray, censored: np.ndarray,
                  min_cell: int, bin_days: int, horizon: int) -> dict | None:
    """One group's release from its grid bins (module doc, "What a release guarantees"): per
    released interval its shown time, the number at risk at its start, its events and censorings,
    its span ``[start, end]`` (start = the previous shown time + one bin: never a person's day),
    ``index`` (the last bin at or before the shown time: the curve there is the curve at it) and
    ``partial`` (someone left in it before the shown time)."""
    leaving = events + censored
    found = release_intervals(leaving, events, at_risk_size, min_cell)
    if found is None:
        return None
    ends, tail = found
    rows, first, before = [], 0, 0.0
    for last in ends:
        rows.append({"time": float(times[last]), "first": first, "last": last})
        first, before = last + 1, float(times[last])
    if tail:
        has = np.nonzero(events[first:])[0]
        last_event = float(times[first + has[-1]]) if has.size else 0.0
        rows.append({"time": tail_time(horizon, bin_days, before, last_event), "first": first,
                     "last": times.shape[0] - 1, "tail": True})
    out = {k: [] for k in ("times", "at_risk", "events", "censored", "span", "index", "partial")}
    gone, start = 0, float(bin_days)
    for r in rows:
        a, b = r["first"], r["last"]
        d, c = int(events[a:b + 1].sum()), int(censored[a:b + 1].sum())
        n = int(at_risk_size - gone)
        if r.get("tail"):
            c = n - d  # censored in the tail, or followed past the grid: all still at risk at its time
        out["times"].append(r["time"])
        out["at_risk"].append(n)
        out["events"].append(d)
        out["censored"].append(c)
        out["span"].append([start, r["time"]])
        out["index"].append(b)
        out["partial"].append(bool(r.get("tail")) or bool(leaving[a:b].sum() > 0))
        gone += d + c
        start = r["time"] + bin_days
    return out


def release_secure(g: dict, min_cell: int, bin_days: int, horizon: int) -> dict | None:
    """One pooled group's curve, computed on the full pooled grid (exact) and released at the
    intervals of :func:`released_rows`: each released value is the exact one at its time; a row that
    stands for persons who left before its time says so (``coarsened``, ``span``)."""
    moved = (g["events"] + g["censored"]) > 0  # bins where nobody leaves change nothing
    times, events, censored = g["times"][moved], g["events"][moved], g["censored"][moved]
    size = int(g["at_risk"][0]) if g["at_risk"].size else 0
    shown = released_rows(times, size, events, censored, min_cell, bin_days, horizon)
    if shown is None:
        return None
    curve = kaplan_meier(g["at_risk"][moved], events)
    at = np.asarray(shown["index"], dtype=int)
    return {"times": np.asarray(shown["times"]), "at_risk": np.asarray(shown["at_risk"]),
            "events": np.asarray(shown["events"]), "censored": np.asarray(shown["censored"]),
            "curve": {k: (v[at] if v.size else np.ones(at.shape[0])) for k, v in curve.items()},
            "coarsened": shown["partial"], "span": shown["span"]}


COARSENED_NOTE = ("secure mode: the curve is computed on the pooled data at every bin and released at the "
                  "times shown, each a day at least min_cell_count persons share (or, for the last row, the "
                  "horizon); a time marked coarsened stands for persons who left during its span (its counts "
                  "cover the span, its at-risk is at the span's start); the survival at each time is exact")


def run(analysis, session: Session) -> dict:
    request = {"type": "km_round", "time": analysis.time.model_dump(mode="json"), "group": analysis.group,
               "bin_days": analysis.bin_days}
    results = session.round(request)
    if session.secure:
        return _run_secure(analysis, session, results["pooled"])
    pooled = pool_groups(results)
    if not pooled:
        raise StatsError("no site released any survival times")
    groups = {}
    for label, g in pooled.items():
        curve = kaplan_meier(g["at_risk"], g["events"])
        groups[label] = {"times": g["times"].tolist(), "at_risk": g["at_risk"].astype(int).tolist(),
                         "events": g["events"].astype(int).tolist(), "censored": g["censored"].astype(int).tolist(),
                         **{k: v.tolist() for k, v in curve.items()},
                         "median": median_survival(g["times"], curve["survival"]),
                         "n": int(g["at_risk"][0]) if g["at_risk"].size else 0,
                         "complete": not g["suppressed_at"], "suppressed_at": g["suppressed_at"],
                         "coarsened": g["coarsened"].tolist(), "merged_by": g["merged_by"]}
    test = logrank(pooled)
    if test is not None and test["statistic"] is not None and not math.isfinite(test["statistic"]):
        test["statistic"], test["p"] = None, None
    out = {"type": "km", "group": analysis.group, "bin_days": analysis.bin_days, "sites": list(session.sites or []),
           "groups": groups, "logrank": test, "rounds": session.rounds}
    merged = sorted({site for g in groups.values() for site in g["merged_by"]})
    if merged:
        out["coarsening"] = PLAIN_NOTE.format(sites=", ".join(merged))
        if test is not None:
            test["note"] = "approximate: " + out["coarsening"]
    return out


PLAIN_NOTE = ("plain mode: {sites} merged time bins to pass their minimum cell count, so the pooled curve is "
              "approximate from the first merged bin on (times marked coarsened) and so is the log-rank test; "
              "secure mode (3 or more sites) pools exactly")


def _run_secure(analysis, session: Session, result: dict) -> dict:
    """KM from one pooled secure ``km_round`` (coordinator/secure.py): exact on the pooled grid,
    released at times that pass the sites' strictest minimum on the pooled counts."""
    min_cell = result["_policy"]["min_cell_count"]
    pooled = pool_groups({"pooled": {"groups": result["groups"]}})
    groups, withheld = {}, list(result.get("suppressed", []))
    for label, g in pooled.items():
        shown = release_secure(g, min_cell, analysis.bin_days, int(result.get("horizon") or DEFAULT_HORIZON))
        if shown is None:
            withheld.append(label)
            continue
        groups[label] = {"times": shown["times"].tolist(), "at_risk": shown["at_risk"].astype(int).tolist(),
                         "events": shown["events"].astype(int).tolist(),
                         "censored": shown["censored"].astype(int).tolist(),
                         **{k: v.tolist() for k, v in shown["curve"].items()},
                         "coarsened": shown["coarsened"], "span": shown["span"],
                         "median": median_survival(shown["times"], shown["curve"]["survival"]),
                         "n": int(g["at_risk"][0]) if g["at_risk"].size else 0,
                         "complete": True, "suppressed_at": []}
    if not groups:
        raise StatsError("no group passes the minimum cell count on the pooled data")
    test = logrank({label: pooled[label] for label in groups})  # on the full pooled grid: exact
    if test is not None and test["statistic"] is not None and not math.isfinite(test["statistic"]):
        test["statistic"], test["p"] = None, None
    return {"type": "km", "group": analysis.group, "bin_days": analysis.bin_days, "sites": list(session.sites or []),
            "groups": groups, "logrank": test, "rounds": session.rounds, "suppressed": sorted(withheld),
            "coarsening": COARSENED_NOTE, "horizon_days": result.get("horizon"),
            "excluded": result.get("excluded")}


# -- site half -------------------------------------------------------------------------------------


def coarsen_km(counts: dict, min_cell: int, bin_days: int, max_days: int | None = None) -> dict | None:
    """One group's release at a site (plain mode): the intervals of :func:`released_rows`, the same
    rule the pooled release uses; None when the group is withheld.  ``merged`` lists the spans of
    rows that stand for persons who left before their shown time (the pooled curve is approximate
    from the first of them on)."""
    times, at_risk, events, censored = (np.asarray(counts[k]) for k in ("times", "at_risk", "events", "censored"))
    size = int(at_risk[0]) if at_risk.size else 0
    horizon = math.ceil((max_days or DEFAULT_HORIZON) / bin_days) * bin_days
    shown = released_rows(times, size, events, censored, min_cell, bin_days, horizon)
    if shown is None:
        return None
    merged = [span for span, partial in zip(shown["span"], shown["partial"]) if partial]
    return {"times": shown["times"], "at_risk": shown["at_risk"], "events": shown["events"],
            "censored": shown["censored"], "merged": merged,
            "bin_days_effective": int(max([bin_days] + [t1 - t0 + bin_days for t0, t1 in merged]))}


def hide_groups(sizes: dict, hidden: set, min_cell: int) -> set:
    """Secondary suppression across groups: a hidden group smaller than the minimum must not be
    recoverable as (cohort size - released groups), so while the hidden groups hold a small one and
    are a single group or total below the minimum, the smallest released group is hidden too."""
    hidden = set(hidden)
    while any(sizes[g] < min_cell for g in hidden) and (len(hidden) < 2 or sum(sizes[g] for g in hidden) < min_cell):
        shown = [g for g in sizes if g not in hidden]
        if not shown:
            break
        hidden.add(min(shown, key=lambda g: (sizes[g], g)))
    return hidden


def site(spec: S.Spec, data, policy) -> dict:
    """``km_round``: per group and bin of the shared grid, at risk / events / censored, coarsened."""
    from cdm.round_frames import compile_survival  # the node's half only: the coordinator never compiles SQL

    a = spec.analysis
    survival = compile_survival(spec, a.time, [a.group] if a.group else [], data.engine, data.site)
    keep = np.ones(survival.time.size, dtype=bool)
    group = None
    if a.group:
        raw = survival.values[a.group]
        keep = np.array([v is not None for v in raw], dtype=bool)
        group = [v for v in raw if v is not None]
    counts = rounds.km_counts(survival.time[keep], survival.event[keep], a.bin_days, group)
    released = {label: coarsen_km(g, policy.min_cell_count, a.bin_days, a.time.max_days) for label, g in counts.items()}
    sizes = {label: g["at_risk"][0] for label, g in counts.items()}
    hidden = hide_groups(sizes, {label for label, g in released.items() if g is None}, policy.min_cell_count)
    return {"groups": {label: None if label in hidden else g for label, g in released.items()},
            "suppressed": sorted(hidden), "bin_days": a.bin_days,
            "excluded": survival.excluded + int((~keep).sum())}


KIND = Kind(model=S.KMAnalysis, site_model=S.KMRound, site=site, run=run, own_frame=True, checks_data=True)
