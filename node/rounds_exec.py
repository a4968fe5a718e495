"""The node's side of the multi-round analyses: compile the arrays, call the shared kernel in
:mod:`cdm.rounds`, apply this site's disclosure policy (docs/analysis-rounds.md, "Disclosure").

* ``km_round`` — survival times (:mod:`cdm.round_frames`); bins coarsened per group (below).
* ``cox_round`` — counting-process intervals; MIN_ROWS; 1..min-1 events -> MIN_CELL; pooled mode
  refused unless every released time passes (below).
* ``glm_round`` — the per-person frame; MIN_ROWS; a binomial outcome class of 1..min-1 -> MIN_CELL.
* ``concordance`` — the per-person frame (two 0/1 variables); 2x2 cells through
  :func:`node.policy.suppress_cells`; a band is hidden when any of its cells is.
* ``habitat_round`` — the biopsy frame; MIN_ROWS over biopsies; an outcome class of 1..min-1 -> MIN_CELL.

**KM coarsening.**  Within a group, a released bin needs ``at_risk >= min_cell_count`` and
``events`` either 0 or ``>= min_cell_count``.  A failing bin is merged with the next one (events
and censorings add; the merged bin is reported at its last time with the at-risk count of its first)
until it passes; a tail whose at-risk count is below the minimum, or a last bin whose events stay
small, is merged into the bin before it.  A group that cannot pass as a whole (fewer members than
the minimum, or 1..min-1 events in total) is released as ``null`` and listed in ``suppressed``;
a hidden group smaller than the minimum takes the next smallest group with it (:func:`hide_groups`).
Merging keeps every total: released events + censored = the group's size = its first at-risk.

**Pooled Cox.**  Merging adjacent times is *not* exact for the pooled partial likelihood (the risk
sets of the merged times differ), so the node never coarsens it.  Per-time sums reveal one person's
covariates whenever a single row enters, leaves or fails at a time (differences of consecutive
``s1``).  So the whole round is refused with ``MIN_CELL`` unless at every released time the risk set
is empty or has at least the minimum rows, and the rows failing, leaving and entering there are each
0 or at least the minimum.  In practice this means a site with daily event times answers ``stratified``.
"""

from __future__ import annotations

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.round_frames import biopsy_frame, compile_intervals, compile_survival
from cdm.vocabulary import UnknownCode
from node.policy import Policy, Refusal, suppress_cells

ROUND_TYPES = ("km_round", "cox_round", "glm_round", "concordance", "habitat_round")


def analyse_round(spec: S.Spec, values: dict, policy: Policy, engine, site: str = "local") -> dict:
    """The released result of a round analysis (raises :class:`Refusal`)."""
    a = spec.analysis
    try:
        if a.type == "glm_round":
            return glm_round(a, values, policy)
        if a.type == "concordance":
            return concordance_round(a, values, policy)
        if engine is None:
            raise Refusal("NOT_ALLOWED", f"{a.type} needs the site's CDM")
        if a.type == "km_round":
            return km_round(spec, a, policy, engine, site)
        if a.type == "cox_round":
            return cox_round(spec, a, policy, engine, site)
        if a.type == "habitat_round":
            return habitat_round(spec, a, policy, engine)
    except (ValueError, UnknownCode) as exc:  # a kernel's check on the data (never row values in it)
        raise Refusal("BAD_SPEC", f"{a.type}: {exc}") from None
    raise Refusal("NOT_ALLOWED", f"analysis {a.type!r} is not a round analysis")


def _enough_rows(n: int, parameters: int, policy: Policy, what: str = "complete rows") -> None:
    need = max(policy.min_rows_model, policy.rows_per_parameter * parameters)
    if n < need:
        raise Refusal("MIN_ROWS", f"needs at least {need} {what} for {parameters} parameter(s)")


def _not_small(count: int, policy: Policy, what: str) -> None:
    if policy.small(int(count)):
        raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} {what}")


# -- Kaplan-Meier ----------------------------------------------------------------------------------


def coarsen_km(counts: dict, min_cell: int, bin_days: int) -> dict | None:
    """Merge one group's bins until every released bin passes (module doc); None if it never can."""
    times, at_risk, events, censored = (counts[k] for k in ("times", "at_risk", "events", "censored"))
    k = len(times)
    spans: list[list[int]] = []
    i = 0
    while i < k:
        if at_risk[i] < min_cell:  # at-risk only falls: the rest cannot stand alone
            if not spans:
                return None
            spans[-1][1] = k - 1
            break
        j, d = i, events[i]
        while 0 < d < min_cell and j + 1 < k:
            j += 1
            d += events[j]
        spans.append([i, j])
        i = j + 1

    def small(span):
        return 0 < sum(events[span[0]:span[1] + 1]) < min_cell

    while spans and small(spans[-1]):
        if len(spans) == 1:
            return None
        last = spans.pop()
        spans[-1][1] = last[1]
    if not spans:
        return None
    merged = [[times[a], times[b]] for a, b in spans if b > a]
    return {"times": [times[b] for _, b in spans], "at_risk": [at_risk[a] for a, _ in spans],
            "events": [int(sum(events[a:b + 1])) for a, b in spans],
            "censored": [int(sum(censored[a:b + 1])) for a, b in spans],
            "merged": merged,
            "bin_days_effective": max([bin_days] + [t1 - t0 + bin_days for t0, t1 in merged])}


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


def km_round(spec: S.Spec, a: S.KMRound, policy: Policy, engine, site: str) -> dict:
    survival = compile_survival(spec, a.time, [a.group] if a.group else [], engine, site)
    keep = np.ones(survival.time.size, dtype=bool)
    group = None
    if a.group:
        raw = survival.values[a.group]
        keep = np.array([v is not None for v in raw], dtype=bool)
        group = [v for v in raw if v is not None]
    counts = rounds.km_counts(survival.time[keep], survival.event[keep], a.bin_days, group)
    released = {label: coarsen_km(g, policy.min_cell_count, a.bin_days) for label, g in counts.items()}
    sizes = {label: g["at_risk"][0] for label, g in counts.items()}
    hidden = hide_groups(sizes, {label for label, g in released.items() if g is None}, policy.min_cell_count)
    return {"groups": {label: None if label in hidden else g for label, g in released.items()},
            "suppressed": sorted(hidden), "bin_days": a.bin_days,
            "excluded": survival.excluded + int((~keep).sum())}


# -- Cox -------------------------------------------------------------------------------------------


def _pooled_problems(start, stop, event, min_cell: int) -> int:
    """How many released times of :func:`cdm.rounds.cox_risk_sums` would fail the pooled rule."""
    counting = bool(np.any(start != 0))
    times = np.unique(np.concatenate([start, stop]) if counting else stop)
    n = stop.size

    def ge(values):  # rows with value >= t, per released time t
        return n - np.searchsorted(np.sort(values), times, side="left")

    def at(values):  # rows with value == t, per released time t
        ordered = np.sort(values)
        return np.searchsorted(ordered, times, side="right") - np.searchsorted(ordered, times, side="left")

    at_risk = ge(stop) - (ge(start) if counting else 0)
    failing, leaving = at(stop[event == 1]), at(stop)
    entering = at(start[start > 0])

    def bad(c):
        return (c > 0) & (c < min_cell)

    return int((bad(at_risk) | bad(failing) | bad(leaving) | bad(entering)).sum())


def cox_round(spec: S.Spec, a: S.CoxRound, policy: Policy, engine, site: str) -> dict:
    survival, iv = compile_intervals(spec, a.time, list(a.covariates), engine, site)
    persons = int(np.unique(iv.person_id).size)
    _enough_rows(persons, len(a.covariates), policy, "persons with complete covariates")
    _not_small(int(iv.event.sum()), policy, "events")
    extra = {"persons": persons, "intervals": int(iv.stop.size), "excluded": survival.excluded}
    if not a.time_varying:  # Harrell's C is defined on one (time, risk) per person, not on intervals
        extra["concordance"] = rounds.concordance_counts(iv.stop, iv.event, iv.X @ np.asarray(a.beta))
    if a.mode == "stratified":
        return {**rounds.cox_stratified(iv.start, iv.stop, iv.event, iv.X, a.beta, a.ties), **extra}
    failing = _pooled_problems(iv.start, iv.stop, iv.event, policy.min_cell_count)
    if failing:
        raise Refusal("MIN_CELL", f"pooled Cox would release {failing} time point(s) whose risk set or tie/"
                                  f"entry/exit group is below {policy.min_cell_count}; use mode: stratified")
    with np.errstate(over="ignore"):  # an overflowing exp(x'beta) is the kernel's ValueError -> BAD_SPEC
        return {**rounds.cox_risk_sums(iv.start, iv.stop, iv.event, iv.X, a.beta, a.ties), **extra}


# -- GLM -------------------------------------------------------------------------------------------


def _complete(values: dict, names: list[str]) -> np.ndarray:
    rows = [row for row in zip(*(values[n] for n in names)) if all(v is not None for v in row)]
    return np.array(rows, dtype=float).reshape(-1, len(names))


def _outcome_classes(y: np.ndarray, policy: Policy, what: str) -> None:
    positives = int((y == 1).sum())
    _not_small(positives, policy, f"{what} with outcome 1")
    _not_small(int(y.size) - positives, policy, f"{what} with outcome 0")


def glm_round(a: S.GLMRound, values: dict, policy: Policy) -> dict:
    names = [a.outcome, *a.covariates] + ([a.weights] if a.weights else [])
    rows = _complete(values, names)
    n, p = rows.shape[0], len(a.covariates) + 1
    _enough_rows(n, p, policy)
    y = rows[:, 0]
    X = np.column_stack([np.ones(n), rows[:, 1:1 + len(a.covariates)]])
    w = rows[:, -1] if a.weights else None
    if a.family == "gaussian":
        return rounds.glm_gaussian(y, X, w)
    _outcome_classes(y, policy, "rows")
    return rounds.glm_binomial(y, X, a.beta, w)


# -- imaging / ctDNA concordance -------------------------------------------------------------------

CELLS = ((1, 1), (1, 0), (0, 1), (0, 0))  # (imaging, ctdna): table[0] = imaging yes, table[1] = no


def concordance_round(a: S.ConcordanceRound, values: dict, policy: Policy) -> dict:
    rows = _complete(values, [a.imaging, a.ctdna])
    if not np.all((rows == 0) | (rows == 1)):
        raise Refusal("BAD_SPEC", f"concordance: {a.imaging!r} and {a.ctdna!r} must take values 0/1 "
                                  "(use reduce: first/last/max for ctdna detected)")
    _not_small(rows.shape[0], policy, "persons with both calls")
    imaging, ctdna = rows[:, 0], rows[:, 1]
    params = (a.imaging_sens, a.imaging_spec, a.ctdna_sens, a.ctdna_spec, a.prior)
    posterior = rounds.posterior_progression(imaging, ctdna, *params)
    table = rounds.concordance_table(imaging, ctdna, posterior, a.band)
    counts = [table["table"][0][0], table["table"][0][1], table["table"][1][0], table["table"][1][1]]
    hidden = suppress_cells(list(CELLS), counts, policy)
    cell_posterior = rounds.posterior_progression([c[0] for c in CELLS], [c[1] for c in CELLS], *params)
    lo, hi = a.band
    band_of = ["likely_progression" if q >= hi else "likely_response" if q <= lo else "indeterminate"
               for q in cell_posterior]
    out = {"n": table["n"],
           "table": [[None if 0 in hidden else counts[0], None if 1 in hidden else counts[1]],
                     [None if 2 in hidden else counts[2], None if 3 in hidden else counts[3]]],
           "posterior": [[float(cell_posterior[0]), float(cell_posterior[1])],
                         [float(cell_posterior[2]), float(cell_posterior[3])]],
           "suppressed": [list(CELLS[i]) for i in sorted(hidden)]}
    for band in ("likely_progression", "indeterminate", "likely_response"):
        cells = [i for i, b in enumerate(band_of) if b == band]
        # a band total next to a released cell would give away a suppressed one: hide it too
        out[band] = None if any(i in hidden for i in cells) or policy.small(table[band]) else table[band]
        if out[band] is None:
            out["suppressed"].append(band)
    return out


# -- habitat-weighted biopsy model -----------------------------------------------------------------


def habitat_round(spec: S.Spec, a: S.HabitatRound, policy: Policy, engine) -> dict:
    biopsies = biopsy_frame(spec, engine, a.gene, a.variant_type)
    labelled = np.array([h in a.habitats for h in biopsies.habitat], dtype=bool)
    located = ~np.isnan(biopsies.distance_mm)
    keep = labelled & located
    n, p = int(keep.sum()), len(a.habitats)
    _enough_rows(n, p, policy, "located biopsies with a specimen")
    y = biopsies.outcome[keep].astype(float)
    _outcome_classes(y, policy, "biopsies")
    labels = [h for h, k in zip(biopsies.habitat, keep) if k]
    X = np.column_stack([np.ones(n)] + [[1.0 if h == name else 0.0 for h in labels] for name in a.habitats[1:]])
    weights = rounds.habitat_weight(biopsies.distance_mm[keep], biopsies.error_mm[keep])
    result = rounds.glm_binomial(y, X, a.beta, weights)
    return {**result, "sum_weights": float(weights.sum()),
            "excluded": {"no_specimen": biopsies.no_specimen, "other_habitat": int((~labelled).sum()),
                         "no_distance": int((labelled & ~located).sum())}}
