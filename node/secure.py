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
``crosstab``            ``cells``: persons per combination of the spec's categories (every one)
``histogram``           ``cells``: below the first edge, per bin, above the last edge
``summary``             per variable ``n``, ``sum``, ``sum_sq``
``crossprod``           ``n``, ``sums``, ``cross`` (a column rare at this site is still refused)
``concordance``         ``n``, the 2x2 ``table``, the three band counts
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
pooled fits the request carries under ``lock`` (zeros for the first round), and a ``quantile_round``
only the thresholds :func:`cdm.analyses.quantile.expected_thresholds` derives from the pooled counts
under ``lock`` (the first round's are fixed); it refuses any other with ``ROUND_LOCKED``
(``[secure] lock_rounds = false`` turns this off for a site that must serve a different algorithm).

**Peer keys.**  A secure request names every peer by its key certificate
(:func:`cdm.secagg.certify`: the X25519 key, signed by the peer's Ed25519 site key, bound to its site
name and key epoch).  The node checks each against the Ed25519 key it trusts for that peer
(:func:`authenticate`, :func:`pinned_key`): the one the administrator pinned under ``[secure.peers]``,
else (``trust = "first-use"``, the default) the one it saw first and pinned in its state, as SSH's
known_hosts does.  A certificate that does not verify -- a coordinator substituting its own key for
a peer's to unmask this site -- is refused ``SECURE_PEERS`` before anything is computed.  First use
trusts the coordinator at first contact: a coordinator that invents sites (certificates it signed
itself) is pinned like a new genuine site, so against a coordinator not trusted at all only
``trust = "pinned"`` with keys obtained out of band protects (docs/threat-model.md).

``node.toml``::

    [secure]
    required = true        # refuse plain (unmasked) answers to analyses that have a secure form
    lock_rounds = true     # default
    trust = "first-use"    # or "pinned": only the keys below
    [secure.peers]         # the other sites' Ed25519 keys (their site.pub), learnt out of band
    site-b = "base64 of 32 bytes"
"""

from __future__ import annotations

import hashlib
import math
import threading

import numpy as np
from sqlalchemy import insert, select

from cdm import newton, rounds, secagg
from cdm import spec as S
from cdm.analyses.km import DEFAULT_HORIZON
from cdm.round_frames import compile_intervals, compile_survival
from cdm.wire import Signer, public_key_text
from node.disclosure.policy import Policy, Refusal

SECURE_TYPES = ("count", "crosstab", "histogram", "summary", "crossprod", "concordance", "quantile_round", "km_round",
                "cox_round", "glm_round")
LOCKED_TYPES = ("cox_round", "glm_round", "habitat_round", "quantile_round")


def settings(config) -> dict:
    section = config.section("secure") if config is not None else {}
    # anything but "first-use" is the strict reading: only the keys pinned under [secure.peers]
    trust = "first-use" if section.get("trust", "first-use") == "first-use" else "pinned"
    return {"required": bool(section.get("required", False)), "lock_rounds": bool(section.get("lock_rounds", True)),
            "trust": trust, "peers": dict(section.get("peers") or {})}


def _signer(config) -> Signer:
    from node.bus_connection import bus_settings

    return Signer(config.site_name, bus_settings(config).signer_key())


def own_key(config):
    """This site's X25519 key, bound to its current Ed25519 signing key (rotates with it)."""
    return secagg.load_or_create(secagg.site_key_path(config.data_dir, public_key_text(_signer(config).key)))


def describe(config) -> dict:
    """What the heartbeat says: the certified public key for secure sums and whether this site requires them."""
    try:
        signer = _signer(config)
        key = own_key(config)
    except Exception:  # noqa: BLE001 - no signing key configured: this node cannot take part
        return {}
    return {"secagg": {"protocol": secagg.PROTOCOL, "key": secagg.public_text(key),
                       "certificate": secagg.certify(signer, key), "required": settings(config)["required"],
                       "analyses": list(SECURE_TYPES)}}


# -- peer keys -----------------------------------------------------------------------------------

_pin_lock = threading.Lock()
_pins: dict[tuple[str, str], str] = {}  # (state database, site) -> the signing key pinned for it


def pinned_key(config, site: str) -> str | None:
    """The Ed25519 key this node trusts for peer ``site``: pinned in node.toml, else pinned on first use
    in its state database, else None (never met)."""
    from node.state import secure_peer_keys, state_engine

    configured = settings(config)["peers"].get(site)
    if configured is not None:
        return str(configured)
    engine = state_engine(config)
    cached = _pins.get((str(engine.url), site))  # a pin never changes once written: no query per round
    if cached is None:
        with engine.connect() as conn:
            cached = conn.execute(select(secure_peer_keys.c.signing_key)
                                  .where(secure_peer_keys.c.site == site)).scalar_one_or_none()
        if cached is not None:
            _pins[(str(engine.url), site)] = cached
    return cached


def forget_pin(engine, site: str) -> None:
    """Drop this process's cached pin for ``site`` (``radfed-node secure forget``)."""
    _pins.pop((str(engine.url), site), None)


def authenticate(config, peers: secagg.Peers, site: str) -> None:
    """Every other peer's key is the one its certificate names, signed by the key this node trusts for
    that peer (:func:`pinned_key`); :class:`Refusal` ``SECURE_PEERS`` otherwise.  A peer never met is
    pinned on first use (``trust = "first-use"``) or refused (``"pinned"``)."""
    from node.state import secure_peer_keys, state_engine, utcnow

    if peers.certificates is None:
        raise Refusal("SECURE_PEERS", "the request names peers without key certificates")
    chosen = settings(config)
    others = sorted(s for s in peers.certificates if s != site)
    trusted = {s: pinned_key(config, s) for s in others}
    new = [s for s in others if trusted[s] is None]
    if new and chosen["trust"] == "pinned":
        raise Refusal("SECURE_PEERS", f"no key is pinned for {new[0]} under [secure.peers] (trust = \"pinned\")")
    try:
        for other in others:
            claimed = trusted[other] or str(secagg.certificate_record(peers.certificates[other]).get("signing_key"))
            secagg.certified_key(peers.certificates[other], other, claimed)
    except secagg.SecAggError as exc:
        raise Refusal("SECURE_PEERS", f"{exc}; this node answers no share with a key it cannot authenticate") from None
    if new:  # first use: from now on only these signing keys speak for these sites
        engine = state_engine(config)
        with _pin_lock, engine.begin() as conn:
            for other in new:
                key = str(secagg.certificate_record(peers.certificates[other])["signing_key"])
                before = conn.execute(select(secure_peer_keys.c.signing_key)
                                      .where(secure_peer_keys.c.site == other)).scalar_one_or_none()
                if before is None:
                    conn.execute(insert(secure_peer_keys).values(site=other, signing_key=key, pinned_at=utcnow()))
                elif before != key:  # a concurrent request pinned another key for it first
                    raise Refusal("SECURE_PEERS", f"{other}'s key certificate is not signed by the key trusted for {other}")
                _pins[(str(engine.url), other)] = key


# -- locked rounds -------------------------------------------------------------------------------


def check_lock(request: dict, config) -> None:
    """Refuse ``ROUND_LOCKED`` a round whose ``beta`` (or thresholds) are not the ones the algorithm
    proposes next."""
    spec = request.get("spec") if isinstance(request, dict) else None
    analysis = spec.get("analysis") if isinstance(spec, dict) else None
    if not isinstance(analysis, dict) or analysis.get("type") not in LOCKED_TYPES:
        return
    if not settings(config)["lock_rounds"]:
        return
    if analysis.get("type") == "quantile_round":
        return check_thresholds(analysis, request.get("lock"))
    if analysis.get("type") == "glm_round" and analysis.get("family") == "gaussian":
        return  # one round of sums: no parameters to choose
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


def check_thresholds(analysis: dict, lock) -> None:
    """Refuse ``ROUND_LOCKED`` a ``quantile_round`` whose thresholds are not the ones the bisection
    asks next after the pooled counts the round carries (:func:`cdm.analyses.quantile.expected_thresholds`)."""
    from cdm.analyses.quantile import expected_thresholds, same_thresholds

    thresholds = analysis.get("thresholds")
    if not isinstance(thresholds, list) or not all(isinstance(t, (int, float)) for t in thresholds):
        return  # the spec parser refuses it with BAD_SPEC
    try:
        expected = expected_thresholds(lock)
    except (ValueError, KeyError, TypeError) as exc:
        raise Refusal("ROUND_LOCKED", f"the round's lock is not usable: {exc}") from None
    if expected is None:
        raise Refusal("ROUND_LOCKED", "the pooled counts this round carries end the bisection: no further round is due")
    if not same_thresholds(thresholds, expected):
        raise Refusal("ROUND_LOCKED", "the thresholds are not the bisection step from the pooled counts of the earlier "
                                      "rounds (rounds are algorithm-locked: nobody may choose a threshold)")


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
    binned = rounds.bin_time(times, bin_days)   # the grid every site uses, plain or secure
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


def secure_crosstab(spec: S.Spec, a, values: dict, site: str) -> tuple[dict, dict]:
    """Persons per combination of the categories the spec defines (every combination, in the order
    of the domains), none hidden: the minimum cell applies to the pooled cells."""
    from cdm.analyses.crosstab import cell_codes
    from node.disclosure.shapes import crosstab_domain

    if any(getattr(spec.variables[n], "kind", None) == "site" for n in a.by):
        raise Refusal("NOT_ALLOWED", "a crosstab by site is per site by definition: it has no secure form")
    keys, codes = cell_codes(values, a, crosstab_domain(spec, a, site))
    return {"keys": [list(k) for k in keys]}, {"cells": np.bincount(codes[codes >= 0], minlength=len(keys))}


def secure_histogram(a, values: dict) -> tuple[dict, dict]:
    """Persons below the first edge, per bin (``numpy.histogram``, the last bin closed), above the last."""
    x = np.array([v for v in values[a.variable] if v is not None], dtype=float)
    counts, _ = np.histogram(x, bins=a.edges)
    return {}, {"cells": [int((x < a.edges[0]).sum()), *map(int, counts), int((x > a.edges[-1]).sum())]}


def secure_summary(a, values: dict) -> tuple[dict, dict]:
    summed = {}
    for name in a.variables:
        x = np.array([v for v in values[name] if v is not None], dtype=float)
        summed.update({f"variables/{name}/n": int(x.size), f"variables/{name}/sum": float(x.sum()),
                       f"variables/{name}/sum_sq": float((x * x).sum())})
    return {}, summed


def secure_crossprod(a, values: dict, policy) -> tuple[dict, dict]:
    """n, sums and raw cross-products over the complete rows.  The row limits apply to the pooled n;
    a column rare at this site is still refused here (a rare 0/1 column's cross-products are those
    few persons' values, and the pooled sum would carry them)."""
    from cdm.analyses.kind import complete_rows

    rows = complete_rows(values, list(a.variables))
    if policy is not None:
        policy.check_columns(rows, list(a.variables))
    return {}, {"n": int(rows.shape[0]), "sums": rows.sum(0), "cross": rows.T @ rows}


def analyse_secure(spec: S.Spec, n_cohort: int, values: dict, engine, site: str, request: dict,
                   policy=None) -> tuple[dict, dict]:
    """(public part, summed part) of this site's share; every shape is fixed by the spec and request."""
    a, secure = spec.analysis, request["secure"]
    try:
        if a.type == "count":
            return {}, {"n": n_cohort}
        if a.type == "crosstab":
            return secure_crosstab(spec, a, values, site)
        if a.type == "histogram":
            return secure_histogram(a, values)
        if a.type == "summary":
            return secure_summary(a, values)
        if a.type == "crossprod":
            return secure_crossprod(a, values, policy)
        if a.type == "concordance":
            from cdm.analyses.concordance import counts

            return {}, counts(a, values)
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


_ledger_lock = threading.Lock()


def admit(config, context: bytes, vector: np.ndarray) -> None:
    """One context, one share: a second, different share under the same pairwise masks would give away
    the difference of the two inputs.  The contexts live in the node's state database (node/state.py),
    so a session replayed after a restart is refused as well; only digests are kept, never a value."""
    from node.state import secure_sessions, state_engine, utcnow

    key = hashlib.sha256(context).hexdigest()
    digest = hashlib.sha256(np.ascontiguousarray(vector, dtype=float).tobytes()).hexdigest()
    with _ledger_lock, state_engine(config).begin() as conn:
        before = conn.execute(select(secure_sessions.c.share_digest)
                              .where(secure_sessions.c.context == key)).scalar_one_or_none()
        if before is not None and before != digest:
            raise Refusal("SECURE_REPLAY", "this secure session was already answered with other values "
                                           "(a session's masks are used once)")
        if before is None:
            conn.execute(insert(secure_sessions).values(context=key, share_digest=digest, at=utcnow()))


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
        raise Refusal("SECURE_PEERS", str(exc)) from None
    if len(peers.keys) < secagg.MIN_SITES:
        raise Refusal("SECURE_PEERS", f"a secure sum needs at least {secagg.MIN_SITES} sites; with "
                                      f"{len(peers.keys)} each could subtract its own share from the sum")
    authenticate(config, peers, config.site_name)
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
    admit(config, context + site.encode(), vector)
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
