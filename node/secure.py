"""The node's half of secure aggregation (:mod:`cdm.secagg`) and of algorithm-locked rounds
(:mod:`cdm.newton`); docs/analysis-rounds.md, "Secure aggregation".

**Secure mode.**  A request with ``secure: {session, peers, horizon?}`` asks this site for its share
of a sum over the sites named in ``peers``.  The node computes the analysis on the grid every site
uses (fixed by the spec and the request, never by its own data), adds the pairwise masks and
releases only the masked vector: nothing about this site alone leaves it, so its small-cell rules
move to the pooled sums (the coordinator applies the strictest ``min_cell_count`` / ``min_rows_model``
/ ``rows_per_parameter`` of the sites, which each share states in clear).  The node refuses a secure
request with fewer than :data:`cdm.secagg.MIN_SITES` peers (two sites could each subtract their own
share from the sum), one that names another key for this site, and a second, different share for a
context it has masked before.

======================  ===========================================================================
analysis                summed (per site, then pooled)
======================  ===========================================================================
``count``               ``n``
``quantile_round``      ``n``, ``n_le`` (per threshold)
``km_round``            per group (labels from the spec) on the bins ``bin_days, 2 bin_days, ..``
                        up to the horizon: ``at_risk``, ``events``, ``censored``; beyond it
                        ``after_n``, ``after_events``; ``excluded``
``cox_round``           stratified: ``loglik``, ``gradient``, ``hessian``, ``n``, ``events``;
                        pooled: :func:`cdm.rounds.cox_risk_sums` on the request's ``grid`` (the pooled
                        event days) + ``n``, ``events``, ``persons``
``glm_round``           binomial: ``loglik``, ``gradient``, ``hessian``, ``n``, ``positives``;
                        gaussian: ``xtx``, ``xty``, ``yty``, ``sw``, ``n``
======================  ===========================================================================

**Locked rounds.**  ``cox_round``, binomial ``glm_round`` and ``habitat_round`` carry ``beta``.  Over
the bus a node answers only the ``beta`` that :func:`cdm.newton.expected_beta` derives from the
pooled fits the request carries under ``lock`` (zeros for the first round) and refuses any other with
``ROUND_LOCKED`` (``[secure] lock_rounds = false`` turns this off for a site that must serve a
different algorithm).

``node.toml``::

    [secure]
    required = true      # refuse plain (unmasked) answers to analyses that have a secure form
    lock_rounds = true   # default
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import numpy as np

from cdm import newton, rounds, secagg
from cdm import spec as S
from cdm.round_frames import compile_intervals, compile_survival
from cdm.wire import public_key_text
from node.disclosure.policy import Policy, Refusal

SECURE_TYPES = ("count", "quantile_round", "km_round", "cox_round", "glm_round")
LOCKED_TYPES = ("cox_round", "glm_round", "habitat_round")
DEFAULT_HORIZON = 3660  # days (ten years and a bit): the first grid, when the spec sets no max_days


def settings(config) -> dict:
    section = config.section("secure") if config is not None else {}
    return {"required": bool(section.get("required", False)), "lock_rounds": bool(section.get("lock_rounds", True))}


def own_key(config):
    """This site's X25519 key, bound to its current Ed25519 signing key (rotates with it)."""
    from node.bus_connection import bus_settings

    signing = bus_settings(config).signer_key()
    return secagg.load_or_create(secagg.site_key_path(config.data_dir, public_key_text(signing)))


def describe(config) -> dict:
    """What the heartbeat says: the public key for secure sums and whether this site requires them."""
    try:
        key = secagg.public_text(own_key(config))
    except Exception:  # noqa: BLE001 - no signing key configured: this node cannot take part
        return {}
    return {"secagg": {"protocol": secagg.PROTOCOL, "key": key, "required": settings(config)["required"],
                       "analyses": list(SECURE_TYPES)}}


# -- locked rounds -------------------------------------------------------------------------------


def check_lock(request: dict, config) -> None:
    """Refuse ``ROUND_LOCKED`` a round whose ``beta`` is not the one the algorithm proposes next."""
    spec = request.get("spec") if isinstance(request, dict) else None
    analysis = spec.get("analysis") if isinstance(spec, dict) else None
    if not isinstance(analysis, dict) or analysis.get("type") not in LOCKED_TYPES:
        return
    if analysis.get("type") == "glm_round" and analysis.get("family") == "gaussian":
        return  # one round of sums: no parameters to choose
    if not settings(config)["lock_rounds"]:
        return
    beta = analysis.get("beta")
    if not isinstance(beta, list) or not all(isinstance(b, (int, float)) for b in beta):
        return  # the spec parser refuses it with BAD_SPEC
    try:
        expected = newton.expected_beta(len(beta), request.get("lock"))
    except (ValueError, KeyError, TypeError) as exc:
        raise Refusal("ROUND_LOCKED", f"the round's lock is not usable: {exc}") from None
    if expected is None:
        raise Refusal("ROUND_LOCKED", "the pooled fits this round carries end the algorithm: no further round is due")
    if not newton.same_beta(beta, expected):
        raise Refusal("ROUND_LOCKED", "beta is not the Newton step from the pooled fits of the earlier rounds "
                                      "(rounds are algorithm-locked: nobody may choose beta)")


# -- secure analyses -----------------------------------------------------------------------------


def group_labels(spec: S.Spec, name: str) -> list[str]:
    """The categories of a grouping variable as the spec declares them (never as the data has them)."""
    var = spec.variables[name]
    if hasattr(var, "group_labels"):
        return list(var.group_labels)
    if getattr(var, "kind", None) == "condition" and isinstance(var.codes, dict):
        return list(var.codes)
    raise Refusal("BAD_SPEC", f"secure km_round: the categories of {name!r} must be declared in the spec "
                              "(a groups variable with labels, or a condition variable with labelled codes)")


def horizon(spec_time: S.SurvivalTime, secure: dict) -> int:
    value = secure.get("horizon", spec_time.max_days or DEFAULT_HORIZON)
    if not isinstance(value, int) or not 1 <= value <= S.MAX_DAYS:
        raise Refusal("BAD_SPEC", f"secure: horizon must be a whole number of days in 1..{S.MAX_DAYS}")
    return value


def km_sums(times, events, bin_days: int, last: int) -> dict:
    """At-risk, events and censored on the bins ``bin_days .. last`` plus what lies beyond ``last``."""
    grid = np.arange(bin_days, last + 1, bin_days)
    binned = np.ceil(np.asarray(times, float) / bin_days) * bin_days
    ev = np.asarray(events, dtype=bool)
    ordered = np.sort(binned)
    at_risk = ordered.size - np.searchsorted(ordered, grid, side="left")
    slot = np.searchsorted(grid, binned)
    inside = binned <= last
    ev_count = np.bincount(slot[inside & ev], minlength=grid.size)[:grid.size]
    all_count = np.bincount(slot[inside], minlength=grid.size)[:grid.size]
    return {"at_risk": at_risk, "events": ev_count, "censored": all_count - ev_count,
            "after_n": int((~inside).sum()), "after_events": int((~inside & ev).sum())}


def secure_km(spec, a: S.KMRound, engine, site, secure) -> tuple[dict, dict]:
    last = math.ceil(horizon(a.time, secure) / a.bin_days) * a.bin_days
    survival = compile_survival(spec, a.time, [a.group] if a.group else [], engine, site)
    labels = group_labels(spec, a.group) if a.group else ["all"]
    raw = survival.values[a.group] if a.group else ["all"] * survival.time.size
    summed = {"excluded": survival.excluded + sum(1 for v in raw if v is None)}
    for label in labels:
        keep = np.array([v == label for v in raw], dtype=bool)
        for key, value in km_sums(survival.time[keep], survival.event[keep], a.bin_days, last).items():
            summed[f"groups/{label}/{key}"] = value
    public = {"bin_days": a.bin_days, "horizon": last, "times": list(range(a.bin_days, last + 1, a.bin_days)),
              "labels": labels}
    return public, summed


def secure_cox(spec, a: S.CoxRound, engine, site, request) -> tuple[dict, dict]:
    survival, iv = compile_intervals(spec, a.time, list(a.covariates), engine, site)
    common = {"n": int(iv.stop.size), "persons": int(np.unique(iv.person_id).size), "events": int(iv.event.sum()),
              "excluded": survival.excluded}
    if a.mode == "stratified":
        fit = rounds.cox_stratified(iv.start, iv.stop, iv.event, iv.X, a.beta, a.ties)
        return {}, {**common, "loglik": fit["loglik"], "gradient": fit["gradient"], "hessian": fit["hessian"]}
    grid = request.get("grid")
    if not isinstance(grid, list) or not grid or not all(isinstance(t, (int, float)) for t in grid):
        raise Refusal("BAD_SPEC", "a secure pooled cox_round needs the pooled event times under 'grid'")
    with np.errstate(over="ignore"):
        sums = rounds.cox_risk_sums(iv.start, iv.stop, iv.event, iv.X, a.beta, a.ties, times=grid)
    keys = ["d", "sum_x_events", "s0", "s1", "s2"] + (["s0_ties", "s1_ties", "s2_ties"] if a.ties == "efron" else [])
    return {"times": sums["times"]}, {**common, **{k: sums[k] for k in keys}}


def secure_glm(a: S.GLMRound, values: dict) -> tuple[dict, dict]:
    from cdm.analyses.kind import complete_rows

    names = [a.outcome, *a.covariates] + ([a.weights] if a.weights else [])
    rows = complete_rows(values, names)
    n = rows.shape[0]
    y = rows[:, 0]
    X = np.column_stack([np.ones(n), rows[:, 1:1 + len(a.covariates)]])
    w = rows[:, -1] if a.weights else None
    if a.family == "gaussian":
        fit = rounds.glm_gaussian(y, X, w)
        return {}, {k: fit[k] for k in ("n", "xtx", "xty", "yty", "sw")}
    fit = rounds.glm_binomial(y, X, a.beta, w)
    return {}, {**{k: fit[k] for k in ("n", "loglik", "gradient", "hessian")}, "positives": int((y == 1).sum())}


def analyse_secure(spec: S.Spec, n_cohort: int, values: dict, engine, site: str, request: dict) -> tuple[dict, dict]:
    """(public part, summed part) of this site's share; every shape is fixed by the spec and request."""
    a, secure = spec.analysis, request["secure"]
    try:
        if a.type == "count":
            return {}, {"n": n_cohort}
        if a.type == "quantile_round":
            x = np.array([v for v in values[a.variable] if v is not None], dtype=float)
            return {}, {"n": int(x.size), "n_le": [int((x <= t).sum()) for t in a.thresholds]}
        if a.type == "glm_round":
            return secure_glm(a, values)
        if engine is None:
            raise Refusal("NOT_ALLOWED", f"{a.type} needs the site's CDM")
        if a.type == "km_round":
            return secure_km(spec, a, engine, site, secure)
        if a.type == "cox_round":
            return secure_cox(spec, a, engine, site, request)
    except ValueError as exc:  # a kernel's check on the data (never row values in it)
        raise Refusal("BAD_SPEC", f"{a.type}: {exc}") from None
    raise Refusal("NOT_ALLOWED", f"analysis {a.type!r} has no secure form (secure: {', '.join(SECURE_TYPES)})")


# -- the share -----------------------------------------------------------------------------------


class Ledger:
    """Contexts this node has masked (in memory): one context, one share.  A second, different share
    under the same pairwise masks would give away the difference of the two inputs."""

    def __init__(self, size: int = 10_000):
        self._seen: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def admit(self, context: bytes, vector: np.ndarray) -> None:
        digest = hashlib.sha256(np.ascontiguousarray(vector, dtype=float).tobytes()).digest()
        with self._lock:
            before = self._seen.get(context)
            if before is not None and before != digest:
                raise Refusal("SECURE_REPLAY", "this secure session was already answered with other values "
                                               "(a session's masks are used once)")
            self._seen[context] = digest
            self._seen.move_to_end(context)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)


LEDGER = Ledger()


def check_request(spec: S.Spec, request: dict, config) -> bool:
    """Whether ``request`` is a secure one this node will answer (raises :class:`Refusal` otherwise);
    a plain request is refused when the site requires secure mode for its analysis type."""
    secure = request.get("secure")
    if secure is None:
        if spec.analysis.type in SECURE_TYPES and settings(config)["required"]:
            raise Refusal("SECURE_REQUIRED", f"this site answers {spec.analysis.type} only in secure mode "
                                             f"(masked shares summed over at least {secagg.MIN_SITES} sites)")
        return False
    if spec.analysis.type not in SECURE_TYPES:
        raise Refusal("NOT_ALLOWED", f"analysis {spec.analysis.type!r} has no secure form")
    try:
        peers = secagg.Peers.from_request(secure)
    except secagg.SecAggError as exc:
        raise Refusal("BAD_SPEC", str(exc)) from None
    if len(peers.keys) < secagg.MIN_SITES:
        raise Refusal("SECURE_PEERS", f"a secure sum needs at least {secagg.MIN_SITES} sites; with "
                                      f"{len(peers.keys)} each could subtract its own share from the sum")
    return True


def share(config, request: dict, site: str, public: dict, summed: dict, policy: Policy) -> dict:
    """The released result: public part, this site's masked share and its policy thresholds."""
    peers = secagg.Peers.from_request(request["secure"])
    shapes, parts = [], []  # a list: signed JSON sorts an object's keys, the vector keeps this order
    for name, value in summed.items():
        array = np.asarray(value, dtype=float)
        shapes.append([name, list(array.shape)])
        parts.append(array.ravel())
    vector = np.concatenate(parts) if parts else np.zeros(0)
    bound = {"spec": request.get("spec"), "grid": request.get("grid"), "lock": request.get("lock")}
    context = secagg.context(peers, bound)
    LEDGER.admit(context + site.encode(), vector)
    try:
        masked = secagg.mask(vector, site, own_key(config), peers, bound)
    except secagg.SecAggError as exc:
        raise Refusal("SECURE_PEERS", str(exc)) from None
    return {**public, "secure": {"protocol": secagg.PROTOCOL, "session": peers.session, "layout": shapes,
                                 "share": secagg.to_text(masked), "size": int(vector.size),
                                 "policy": {"min_cell_count": policy.min_cell_count,
                                            "min_rows_model": policy.min_rows_model,
                                            "rows_per_parameter": policy.rows_per_parameter}}}


def audit_view(result: dict) -> dict:
    """What the audit line keeps of a released share: everything but the share itself, which is
    replaced by its SHA-256 (a Cox share is megabytes of random-looking bytes)."""
    secure = dict(result.get("secure") or {})
    share = str(secure.pop("share", ""))
    secure["share_sha256"] = hashlib.sha256(share.encode("ascii")).hexdigest()
    return {**{k: v for k, v in result.items() if k not in ("secure", "times")}, "secure": secure}
