"""Federated Cox proportional hazards (Cox 1972) by Newton-Raphson on pooled sums.

Two exact decompositions of the partial likelihood (cf. Lu et al. 2015, WebDISCO; Andreux et al. 2020):

* ``stratified`` -- each site is a stratum with its own baseline hazard.  The log partial likelihood
  is a sum over sites of each site's own, so sites release only their log-likelihood, score and
  information at ``beta`` (:func:`cdm.rounds.cox_stratified`).  Equals lifelines
  ``CoxPHFitter(strata=["site"])``.
* ``pooled`` -- one baseline hazard and one risk set across the network.  At every event time the
  risk-set sums ``S0 = sum exp(x'b)``, ``S1``, ``S2`` and the event sums are additive over sites; each
  site releases them at its risk-set change points (:func:`cdm.rounds.cox_risk_sums`) and the
  coordinator evaluates every site at the union of event times, then applies Breslow (1974) or
  Efron (1977) ties to the pooled sums (:func:`cdm.rounds.cox_from_sums`).  Equals lifelines
  ``CoxPHFitter`` (Efron) / statsmodels ``PHReg(ties="breslow")``, and with counting-process
  intervals ``CoxTimeVaryingFitter``.  It also gives the Breslow baseline cumulative hazard, which
  the dynamic forecast publishes to the nodes.

Rounds: one per log-likelihood evaluation (Newton iterations + step-halvings + 1).

Concordance: Harrell's C compares every pair of persons, which no released sum allows across sites.
When every site adds ``concordance`` pair counts (:func:`cdm.rounds.concordance_counts`) to its last
round, the result reports C over *within-site* pairs (exact for that definition); otherwise it says
that C is not computable from the released data.

Site half (``cox_round``): counting-process intervals (:mod:`cdm.round_frames`); MIN_ROWS; 1..min-1
events -> MIN_CELL.  Merging adjacent times is *not* exact for the pooled partial likelihood (the
risk sets of the merged times differ), so the node never coarsens it.  Per-time sums reveal one
person's covariates whenever a single row enters, leaves or fails at a time (differences of
consecutive ``s1``).  So a pooled round is refused with ``MIN_CELL`` unless at every released time
the risk set is empty or has at least the minimum rows, and the rows failing, leaving and entering
there are each 0 or at least the minimum.  In practice a site with daily event times answers
``stratified``.
"""

from __future__ import annotations

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.analyses.inference import coefficient_table, covariance
from cdm.analyses.kind import Kind, enough_rows, not_small
from cdm.analyses.newton import maximise
from cdm.analyses.session import Session, StatsError, array, need
from cdm.errors import Refusal
from cdm.rounds import cox_from_sums

CONCORDANCE_NOTE = ("Harrell's C needs every pair of persons; across sites it is not computable from released "
                    "sums. Reported only when every site releases within-site pair counts (then over within-site pairs).")


def _round(analysis, beta) -> dict:
    return {"type": "cox_round", "time": analysis.time.model_dump(mode="json"), "covariates": list(analysis.covariates),
            "beta": [float(b) for b in beta], "ties": analysis.ties, "mode": analysis.mode,
            "time_varying": analysis.time_varying}


def sum_stratified(results: dict[str, dict], p: int) -> dict:
    """Sum each site's own log-likelihood, score and information."""
    fit = {"loglik": 0.0, "gradient": np.zeros(p), "hessian": np.zeros((p, p)), "n": 0, "events": 0}
    for site, r in results.items():
        fit["loglik"] += float(need(r, "loglik", site, "cox_round"))
        fit["gradient"] = fit["gradient"] + array(r, "gradient", site, "cox_round", (p,))
        fit["hessian"] = fit["hessian"] + array(r, "hessian", site, "cox_round", (p, p))
        fit["n"] += int(need(r, "n", site, "cox_round"))
        fit["events"] += int(need(r, "events", site, "cox_round"))
    return fit


def merge_risk_sums(results: dict[str, dict], p: int, efron: bool) -> dict:
    """Pooled per-event-time sums: each site's step functions evaluated at the union of event times."""
    sites = []
    for site, r in results.items():
        times = array(r, "times", site, "cox_round")
        m = times.shape[0]
        part = {"times": times, "d": array(r, "d", site, "cox_round", (m,)),
                "sum_x_events": array(r, "sum_x_events", site, "cox_round", (m, p)).reshape(m, p),
                "s0": array(r, "s0", site, "cox_round", (m,)),
                "s1": array(r, "s1", site, "cox_round", (m, p)).reshape(m, p),
                "s2": array(r, "s2", site, "cox_round", (m, p, p)).reshape(m, p, p)}
        if efron:
            part["s0_ties"] = array(r, "s0_ties", site, "cox_round", (m,))
            part["s1_ties"] = array(r, "s1_ties", site, "cox_round", (m, p)).reshape(m, p)
            part["s2_ties"] = array(r, "s2_ties", site, "cox_round", (m, p, p)).reshape(m, p, p)
        if np.any(np.diff(times) <= 0):
            raise StatsError(f"{site}: cox_round times are not strictly increasing")
        part["n"] = int(need(r, "n", site, "cox_round"))
        sites.append(part)
    event_times = np.unique(np.concatenate([s["times"][s["d"] > 0] for s in sites]))
    k = event_times.shape[0]
    pooled = {"times": event_times, "d": np.zeros(k), "sum_x_events": np.zeros((k, p)), "s0": np.zeros(k),
              "s1": np.zeros((k, p)), "s2": np.zeros((k, p, p)), "n": sum(s["n"] for s in sites)}
    if efron:
        pooled.update(s0_ties=np.zeros(k), s1_ties=np.zeros((k, p)), s2_ties=np.zeros((k, p, p)))
    for s in sites:
        m = s["times"].shape[0]
        if m == 0:
            continue
        at = np.searchsorted(s["times"], event_times, side="left")  # smallest change point >= t
        inside = at < m
        idx = np.minimum(at, m - 1)
        for key in ("s0", "s1", "s2"):
            pooled[key] += np.where(_expand(inside, s[key]), s[key][idx], 0.0)
        exact = inside & (s["times"][idx] == event_times)
        for key in ("d", "sum_x_events") + (("s0_ties", "s1_ties", "s2_ties") if efron else ()):
            pooled[key] += np.where(_expand(exact, s[key]), s[key][idx], 0.0)
    return pooled


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def breslow_baseline(sums: dict) -> dict:
    """Breslow's cumulative baseline hazard at x = 0: ``H0(t) = sum_{t_k <= t} d_k / S0(t_k)``."""
    keep = sums["d"] > 0
    times = sums["times"][keep]
    return {"times": times.tolist(), "cumulative_hazard": np.cumsum(sums["d"][keep] / sums["s0"][keep]).tolist()}


def run(analysis, session: Session) -> dict:
    """Fit the model ``analysis`` (a :class:`cdm.spec.CoxAnalysis`) over the sites of ``session``."""
    p = len(analysis.covariates)
    efron = analysis.ties == "efron"
    last: dict = {}
    grid, risk_table = None, None
    if session.secure and analysis.mode == "pooled":
        grid, risk_table = secure_grid(analysis, session)

    def evaluate(beta: np.ndarray, lock: dict | None = None) -> dict:
        results = session.round(_round(analysis, beta), lock=lock, grid=grid)
        last["results"] = results
        if analysis.mode == "stratified":
            fit = sum_stratified(results, p)
        else:
            sums = merge_risk_sums(results, p, efron)
            if not np.any(sums["d"] > 0):
                raise StatsError("no events in the pooled data: a Cox model needs at least one")
            fit = cox_from_sums(beta, sums["d"], sums["sum_x_events"], sums["s0"], sums["s1"], sums["s2"],
                                sums.get("s0_ties"), sums.get("s1_ties"), sums.get("s2_ties"), ties=analysis.ties)
            fit.update(n=sums["n"], events=int(sums["d"].sum()), sums=sums)
        last["fit"] = fit
        return fit

    beta, fit, report = maximise(evaluate, np.zeros(p), analysis.max_iter, analysis.tol)
    cov = covariance(fit["hessian"])
    loglik, loglik_null = float(fit["loglik"]), report["loglik_history"][0]
    lr = max(2 * (loglik - loglik_null), 0.0)
    from scipy.stats import chi2  # lazily: the node imports this module for its site half

    out = {
        "type": "cox", "mode": analysis.mode, "ties": analysis.ties, "time_varying": analysis.time_varying,
        "sites": list(session.sites or []), "n": fit["n"], "events": fit["events"],
        "covariates": list(analysis.covariates), "coefficients": coefficient_table(list(analysis.covariates), beta, cov,
                                                                                   exponentiate="exp(coef)"),
        "covariance": cov.tolist(), "loglik": loglik, "loglik_null": loglik_null,
        "likelihood_ratio_test": {"statistic": lr, "df": p, "p": float(chi2.sf(lr, p))},
        "aic_partial": -2 * loglik + 2 * p,
        "convergence": {**report, "rounds": session.rounds},
        "rounds": session.rounds,
    }
    persons = [r.get("persons") for r in last["results"].values()]
    if all(isinstance(x, int) for x in persons):  # nodes report persons besides rows (intervals)
        out["persons"] = sum(persons)
    out.update(_concordance(last["results"]))
    if analysis.mode == "pooled":
        out["baseline"] = breslow_baseline(fit["sums"])
        if risk_table is not None:
            out["baseline"] = secure_baseline(out["baseline"], risk_table, last["results"]["pooled"]["_policy"])
    if session.secure:
        out["concordance_note"] = ("secure mode: no site releases its own pair counts, and pairs across sites "
                                   "cannot be compared from sums")
    return out


def secure_grid(analysis, session: Session) -> tuple[list, dict]:
    """Secure pooled Cox: the pooled event days (one secure ``km_round`` by day), the grid every site
    evaluates its risk-set sums at; and the pooled day table (at risk, events, censored on every day
    anyone leaves, and the horizon) for the baseline's release."""
    km = session.round({"type": "km_round", "time": analysis.time.model_dump(mode="json"), "group": None,
                        "bin_days": 1})["pooled"]
    table = km["groups"].get("all")
    if table is None:
        raise StatsError("fewer than the minimum number of persons or events pooled over the sites")
    events, censored = np.asarray(table["events"]), np.asarray(table["censored"])
    times, at_risk = np.asarray(table["times"], dtype=float), np.asarray(table["at_risk"])
    moved = (events + censored) > 0
    return times[events > 0].tolist(), {"times": times[moved], "events": events[moved], "censored": censored[moved],
                                        "size": int(at_risk[0]) if at_risk.size else 0,
                                        "horizon": int(km.get("horizon") or 0)}


def secure_baseline(baseline: dict, table: dict, policy: dict) -> dict:
    """The pooled Breslow baseline released by the KM interval rule on the pooled days
    (:func:`cdm.analyses.km.released_rows`: every shown time a day at least ``min_cell_count``
    pooled persons leave, 0 or at least that many deaths per step, the last step at the horizon),
    so no shown time is one person's day; exact at each shown time (a step function)."""
    from cdm.analyses.km import DEFAULT_HORIZON, released_rows

    shown = released_rows(table["times"], table["size"], table["events"], table["censored"],
                          policy["min_cell_count"], 1, table["horizon"] or DEFAULT_HORIZON)
    if shown is None:
        return {"times": [], "cumulative_hazard": [], "coarsened": [],
                "note": "withheld: no step holds the minimum number of events pooled"}
    steps, cumhaz = np.asarray(baseline["times"], dtype=float), np.asarray(baseline["cumulative_hazard"])
    at = np.searchsorted(steps, shown["times"], side="right") - 1  # the last step at or before each shown time
    return {"times": shown["times"], "cumulative_hazard": np.where(at >= 0, cumhaz[np.maximum(at, 0)], 0.0).tolist(),
            "coarsened": shown["partial"],
            "note": "secure mode: released at days at least min_cell_count pooled persons share (the last at the "
                    "horizon), each step with 0 or at least min_cell_count pooled events; a coarsened time stands "
                    "for the days of its span (exact at it)"}


def _concordance(results: dict[str, dict]) -> dict:
    counts = [r.get("concordance") for r in results.values()]
    if not counts or any(not isinstance(c, dict) or c.get("comparable") is None for c in counts):
        return {"concordance": None, "concordance_note": CONCORDANCE_NOTE}
    comparable = sum(int(c["comparable"]) for c in counts)
    if comparable == 0:
        return {"concordance": None, "concordance_note": "no comparable pairs within any site"}
    score = sum(int(c["concordant"]) + int(c["tied"]) / 2 for c in counts) / comparable
    return {"concordance": score, "concordance_note": "Harrell's C over within-site pairs"}


def forecast_model(result: dict, spec: dict, name: str | None = None) -> dict:
    """The ``radfed.cox-model/1`` document (:mod:`cdm.published_model`) a pooled fit publishes to the
    nodes for ``radfed-node forecast``: coefficients, the covariates' variable definitions from the
    job's ``spec``, and the Breslow baseline at covariates = 0 (:func:`cdm.rounds.cox_survival`)."""
    if result.get("type") != "cox" or "baseline" not in result:
        raise StatsError("only a pooled-baseline Cox fit has a baseline hazard to forecast from")
    variables = spec.get("variables") or {}
    missing = [c for c in result["covariates"] if c not in variables]
    if missing:
        raise StatsError(f"the spec does not define covariates {missing}")
    analysis = spec.get("analysis") or {}
    return {"format": "radfed.cox-model/1", "name": name or "Cox model: " + " + ".join(result["covariates"]),
            "time": analysis.get("time"), "covariates": list(result["covariates"]),
            "coef": {r["covariate"]: r["coef"] for r in result["coefficients"]},
            "variables": {c: variables[c] for c in result["covariates"]},
            "baseline": {"times": result["baseline"]["times"], "cumhaz": result["baseline"]["cumulative_hazard"]},
            "fit": {"sites": result["sites"], "n": result["n"], "events": result["events"], "ties": result["ties"],
                    "mode": result["mode"], "time_varying": result["time_varying"], "rounds": result["rounds"]}}


# -- site half -------------------------------------------------------------------------------------


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


def site(spec: S.Spec, data, policy) -> dict:
    """``cox_round``: this site's stratum sums, or its risk-set sums (pooled mode), at ``beta``."""
    from cdm.round_frames import compile_intervals  # the node's half only: the coordinator never compiles SQL

    a = spec.analysis
    survival, iv = compile_intervals(spec, a.time, list(a.covariates), data.engine, data.site)
    persons = int(np.unique(iv.person_id).size)
    enough_rows(persons, len(a.covariates), policy, "persons with complete covariates")
    not_small(int(iv.event.sum()), policy, "events")
    policy.check_columns(iv.X, list(a.covariates), "intervals", iv.person_id)
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


KIND = Kind(model=S.CoxAnalysis, site_model=S.CoxRound, site=site, run=run, own_frame=True, checks_data=True,
            releases_model=True, rounds="Newton-Raphson: one round per iteration (at most max_iter) + 1")
