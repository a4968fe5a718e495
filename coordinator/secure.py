"""The coordinator's half of secure aggregation (:mod:`cdm.secagg`; the node's half is node/secure.py).

**Which mode.**  :func:`choose_mode`: secure when the spec asks for it (``federation: {secure: true}``)
or a site's policy requires it (its heartbeat says ``secagg.required``); otherwise secure by default
whenever :data:`cdm.secagg.MIN_SITES` (3) or more sites take part and the analysis has a secure form
(:data:`SECURE_ANALYSES`), plain below that.  Two sites cannot hide from each other (each could
subtract its own share from the sum), so secure mode with two sites is refused, and the default for
two is plain mode, in which each site applies its own thresholds to what it releases.

**A secure round** (:class:`SecureRound`): every site of the job gets the same spec plus
``secure: {session, peers}`` (``session`` = job / round / attempt; ``peers`` = every site's X25519
key certificate from its signed heartbeat, relayed unchanged: signed by the site's own Ed25519 key,
so every node checks each peer's key itself and a substituted key is refused) and answers a masked
share.  Only when *every* site answered can the
masks cancel: the coordinator adds the shares modulo 2**128 and decodes the pooled sums.  It never
holds, stores or logs a site's own values.  Before anything reaches the algorithm or the researcher,
the pooled sums pass the strictest policy of the sites (:func:`pooled_policy`, :func:`check_pooled`).

**A site that drops** after the masks were fixed (timeout, offline, or a refusal) leaves the other
shares masked.
The round is then re-run *without it with fresh seeds* (a new attempt number in the session), and a
multi-round analysis restarts from its first round (a fit over a changed set of sites is not the
pooled fit).  Chosen over Shamir recovery of the dropped site's seeds (Bonawitz et al. 2017, 4.2):
recovery needs every site to hold secret shares of every other's seed, a further round in which
survivors reveal them, and double masking so that a late share cannot then be unmasked alone; a
re-run needs none of that, costs one round, and reveals nothing (the dropped site's pairwise masks
are never reconstructed; the aborted shares stay masked by them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cdm import secagg
from cdm.errors import RadfedError
from cdm.analyses.session import StatsError
from coordinator.fanout import QuorumError, describe_missing

#: researcher-level analyses with a secure form, and the node analyses they send
SECURE_ANALYSES = ("count", "crosstab", "summary", "histogram", "correlation", "concordance", "quantile", "km", "cox",
                   "glm")
#: the one-round kinds :func:`secure_table` pools (the others are driven over rounds by their ``run``)
SECURE_TABLES = ("count", "crosstab", "summary", "histogram")


class SecureModeError(RadfedError, ValueError):
    """The job cannot run in the mode it needs (too few sites, no key, analysis without a secure form)."""


class SiteDropped(RadfedError, RuntimeError):
    """Sites did not give their share of a secure round (dropped out, or refused): re-run without them."""

    def __init__(self, replies: list, message: str):
        super().__init__(message)
        self.replies = replies  # their SiteReply of that round (status, code, reason)
        self.sites = [r.site for r in replies]


@dataclass
class Mode:
    secure: bool
    reason: str
    keys: dict = field(default_factory=dict)  # site -> its X25519 key certificate (secure mode; cdm.secagg.certify)
    required: bool = False  # asked for by the spec or a site's policy (not merely the default)

    def as_dict(self) -> dict:
        return {"mode": "secure" if self.secure else "plain", "reason": self.reason}

    def round(self, asker, analysis: dict, extra: dict) -> list[dict]:
        """What :class:`coordinator.fanout.Asker` calls for each round of a secure job."""
        return secure_round(asker, analysis, extra)


def without_secure_form(spec: dict) -> str | None:
    """Why ``spec``'s analysis has no secure form, or None when it has one."""
    analysis = spec.get("analysis") or {}
    kind = analysis.get("type")
    if kind not in SECURE_ANALYSES:
        return f"{kind!r} has no secure form (secure: {', '.join(SECURE_ANALYSES)})"
    by_site = [v for v in analysis.get("by") or [] if ((spec.get("variables") or {}).get(v) or {}).get("kind") == "site"]
    if kind == "crosstab" and by_site:
        return f"a crosstab by {by_site[0]!r} (a site variable) is per site by definition"
    group = analysis.get("group") if kind == "km" else None
    if group:
        var = (spec.get("variables") or {}).get(group) or {}
        declared = var.get("kind") == "groups" or (var.get("kind") == "condition" and isinstance(var.get("codes"), dict))
        if not declared:
            return (f"secure KM needs the categories of {group!r} declared in the spec (a groups variable, or a "
                    "condition variable with labelled codes): which categories exist must not depend on the data")
    return None


def choose_mode(spec: dict, requested, sites: list[str], heartbeats: dict[str, dict]) -> Mode:
    """The job's mode (module doc); raises :class:`SecureModeError` when the needed mode is impossible."""
    info = {s: (heartbeats.get(s) or {}).get("secagg") or {} for s in sites}
    required_by = sorted(s for s, i in info.items() if i.get("required"))
    problem = without_secure_form(spec)
    capable = problem is None
    if requested is False and required_by:
        raise SecureModeError(f"the spec asks for plain mode, but {', '.join(required_by)} require(s) secure aggregation")
    if requested is True or required_by:
        why = "the spec asks for it" if requested is True else f"required by {', '.join(required_by)}"
        if not capable:
            raise SecureModeError(f"secure aggregation ({why}) is not available: {problem}")
        if len(sites) < secagg.MIN_SITES:
            raise SecureModeError(f"secure aggregation ({why}) needs at least {secagg.MIN_SITES} sites; with "
                                  f"{len(sites)} each site could subtract its own share from the sum")
    elif requested is False:
        return Mode(False, "the spec asks for plain mode")
    elif not capable:
        return Mode(False, f"{problem}; each site applies its own policy")
    elif len(sites) < secagg.MIN_SITES:
        return Mode(False, f"{len(sites)} site(s): below {secagg.MIN_SITES} a sum cannot hide one site from "
                           "another, so each site applies its own policy")
    else:
        why = f"default with {len(sites)} sites"
    required = requested is True or bool(required_by)
    missing = sorted(s for s, i in info.items() if not isinstance(i.get("certificate"), dict))
    if missing and required:
        raise SecureModeError(f"secure aggregation ({why}): {', '.join(missing)} announced no secure-aggregation "
                              "key (no heartbeat yet, or a node without it)")
    if missing:  # offline since before the coordinator knew it, or an older node: as a plain job
        return Mode(False, f"{', '.join(missing)} announced no secure-aggregation key (no heartbeat yet, or a node "
                           "without it); each site applies its own policy")
    return Mode(True, why, {s: info[s]["certificate"] for s in sites}, required=required)


# -- one secure round ----------------------------------------------------------------------------


def nest(flat: dict) -> dict:
    """``{"groups/A/events": v}`` -> ``{"groups": {"A": {"events": v}}}``."""
    out: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split("/")
        here = out
        for part in path:
            here = here.setdefault(part, {})
        here[leaf] = value
    return out


def combine(results: dict[str, dict], session: str) -> dict:
    """The pooled result from every site's masked share (each site's public part must agree)."""
    shares, public, layout, policies = [], None, None, []
    for site, result in sorted(results.items()):
        secure = result.get("secure") if isinstance(result, dict) else None
        if not isinstance(secure, dict) or secure.get("session") != session:
            raise secagg.SecAggError(f"{site} did not answer with a share of session {session}")
        own_public = {k: v for k, v in result.items() if k != "secure"}
        if public is None:
            public, layout = own_public, secure.get("layout")
        elif own_public != public or secure.get("layout") != layout:
            raise secagg.SecAggError(f"{site} answered on another grid or layout than the other sites")
        shares.append(secagg.from_text(str(secure.get("share")), int(secure.get("size", -1))))
        policies.append(secure.get("policy") or {})
    total = secagg.unmask(shares)
    summed, at = {}, 0
    for name, shape in layout or []:
        size = int(np.prod(shape)) if shape else 1
        part = total[at:at + size]
        summed[name] = part.reshape(shape).tolist() if shape else float(part[0])
        at += size
    if at != total.shape[0]:
        raise secagg.SecAggError("the layout does not cover the summed vector")
    return {**(public or {}), **_rounded(nest(summed)), "_policy": pooled_policy(policies)}


COUNT_KEYS = ("n", "n_le", "cells", "table", "likely_progression", "indeterminate", "likely_response", "persons", "events", "d", "positives", "at_risk", "censored", "after_n",
              "after_events", "excluded")


def _rounded(tree):
    """Sums of integer counts come back as exact floats: give them back as ints."""
    if isinstance(tree, dict):
        return {k: (_ints(v) if k in COUNT_KEYS else _rounded(v)) for k, v in tree.items()}
    return tree


def _ints(value):
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return _rounded(value)
    return int(round(value))


def pooled_policy(policies: list[dict]) -> dict:
    """The strictest thresholds among the sites of a sum: each applies to the pooled quantities."""
    keys = ("min_cell_count", "min_rows_model", "rows_per_parameter")
    return {k: max([int(p.get(k, 0)) for p in policies] + [1]) for k in keys}


def small(n, policy: dict) -> bool:
    return 0 < int(n) < policy["min_cell_count"]


def check_pooled(analysis: dict, pooled: dict) -> dict:
    """Apply the sites' policy to one pooled round before the algorithm reads it; raises
    :class:`PooledRefusal` when the round cannot be used at all."""
    policy, kind = pooled["_policy"], analysis.get("type")
    if kind == "quantile_round":
        n = pooled["n"]
        if small(n, policy):
            raise PooledRefusal("MIN_CELL", f"fewer than {policy['min_cell_count']} values pooled over the sites")
        pooled["n_le"] = [None if small(k, policy) or small(n - k, policy) else k for k in pooled["n_le"]]
    elif kind in ("cox_round", "glm_round", "crossprod"):
        p = len(analysis.get("variables") if kind == "crossprod" else analysis.get("covariates") or []) \
            + (1 if kind == "glm_round" else 0)
        need = max(policy["min_rows_model"], policy["rows_per_parameter"] * p)
        rows = pooled.get("persons", pooled.get("n"))
        if rows < need:
            raise PooledRefusal("MIN_ROWS", f"needs at least {need} complete rows pooled over the sites for {p} "
                                            f"parameter(s); {rows} < {need}")
        if kind == "cox_round" and small(pooled["events"], policy):
            raise PooledRefusal("MIN_CELL", f"fewer than {policy['min_cell_count']} events pooled over the sites")
        if kind == "glm_round" and "positives" in pooled:
            if small(pooled["positives"], policy) or small(pooled["n"] - pooled["positives"], policy):
                raise PooledRefusal("MIN_CELL", f"an outcome class has fewer than {policy['min_cell_count']} rows "
                                                "pooled over the sites")
    elif kind == "concordance":
        pooled = pooled_concordance(analysis, pooled)
    return pooled


def pooled_concordance(analysis: dict, pooled: dict) -> dict:
    """The pooled agreement table as a site would release its own: the strictest minimum on the pooled
    persons, cells (primary and secondary suppression) and bands (:func:`cdm.analyses.concordance.released`)."""
    from cdm.analyses.concordance import CELLS, released
    from cdm.spec import ConcordanceRound
    from cdm.suppression import suppress_cells

    minimum = pooled["_policy"]["min_cell_count"]
    if pooled["n"] < minimum:
        raise PooledRefusal("MIN_CELL", f"fewer than {minimum} persons with both calls pooled over the sites")
    cells = [c for row in pooled["table"] for c in row]
    hidden = suppress_cells(list(CELLS), cells, minimum)
    return {**released(ConcordanceRound(**analysis), pooled, hidden, lambda n: n < minimum), "_policy": pooled["_policy"]}


class PooledRefusal(StatsError):
    """The pooled sums fail the sites' policy: nothing of the round is used or released."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# -- the round driver ------------------------------------------------------------------------------


def secure_round(asker, analysis: dict, extra: dict) -> list[dict]:
    """One secure sum over ``asker.sites`` (a :class:`coordinator.fanout.Asker` with ``secure``); a
    ``km_round`` whose pooled events reach past the horizon is asked again on a longer one."""
    from cdm.analyses.km import longer_horizon
    from cdm.spec import MAX_DAYS

    horizon = None
    while True:
        number = len(asker.rounds) + 1
        session = f"{asker.job_id}/round-{number}/attempt-{asker.attempt}"
        block = {"protocol": secagg.PROTOCOL, "session": session, "peers": dict(sorted(asker.secure.keys.items()))}
        if horizon is not None:
            block["horizon"] = horizon
        replies = asker.send(analysis, {**extra, "secure": block}, mode="secure")
        missing = [r for r in replies if r.status != "ok"]
        if missing and len(missing) == len(replies):
            raise QuorumError(f"secure round {number} ({analysis.get('type')}): no site gave its share: "
                              f"{describe_missing(missing)}", replies)
        if missing:  # the other shares stay masked: the caller re-runs without these sites
            raise SiteDropped(missing, f"secure round {number} ({analysis.get('type')}): no share from "
                                       f"{describe_missing(missing)}")
        try:
            pooled = combine({r.site: r.result or {} for r in replies}, session)
        except secagg.SecAggError as exc:
            raise StatsError(f"secure round {number}: {exc}") from None
        if analysis.get("type") != "km_round":
            break
        beyond = sum(g.get("after_events", 0) for g in pooled.get("groups", {}).values())
        if not beyond or pooled["horizon"] >= MAX_DAYS:
            break
        horizon = longer_horizon(pooled["horizon"])  # events past the grid: a longer one, fresh masks
    if analysis.get("type") == "km_round":
        pooled = km_groups(pooled)
    return [{**check_pooled(analysis, pooled), "_site": "pooled"}]


def km_groups(pooled: dict) -> dict:
    """A pooled secure ``km_round`` in the shape :mod:`cdm.analyses.km` pools: groups with
    fewer than ``min_cell_count`` persons pooled are withheld (listed in ``suppressed``)."""
    policy, times = pooled["_policy"], pooled["times"]
    groups, suppressed = {}, []
    for label in pooled["labels"]:
        g = pooled["groups"][label]
        size = g["at_risk"][0] if g["at_risk"] else 0
        if size == 0:
            continue
        if small(size, policy) or small(sum(g["events"]), policy):
            suppressed.append(label)
            continue
        groups[label] = {"times": times, "at_risk": g["at_risk"], "events": g["events"], "censored": g["censored"]}
    return {**pooled, "groups": groups, "suppressed": suppressed,
            "after_horizon": sum(g.get("after_n", 0) for g in pooled["groups"].values())}


def secure_table(ask, analysis: dict) -> dict:
    """A one-round table (:data:`SECURE_TABLES`) in secure mode: the pooled cells with the strictest
    site minimum applied to *them*, primary and secondary suppression over the pooled table
    (:func:`cdm.suppression.suppress_cells`), in the table shape of plain mode, with no per-site cell."""
    from cdm.analyses import crosstab, histogram, summary
    from cdm.suppression import suppress_cells

    kind = analysis.get("type")
    pooled = ask({"type": "count"} if kind == "count" else analysis)[0]
    minimum = pooled["_policy"]["min_cell_count"]
    if kind == "count":
        n = int(pooled["n"])
        cell = {"n": None, "suppressed": True} if small(n, pooled["_policy"]) else {"n": n}
        table = {"type": "count", "columns": [],
                 "rows": [{"key": ["persons"], "pooled": {**cell, "complete": True, "suppressed_at": []}}]}
    elif kind == "crosstab":
        keys, counts = [tuple(k) for k in pooled["keys"]], list(pooled["cells"])
        hidden = suppress_cells(keys, counts, minimum)
        cells = [{"key": list(k), "n": None if i in hidden else n} for i, (k, n) in enumerate(zip(keys, counts))]
        table = crosstab.pool(analysis, {"pooled": {"cells": cells}})
    elif kind == "histogram":
        counts = list(pooled["cells"])
        hidden = suppress_cells([(i,) for i in range(len(counts))], counts, minimum)
        shown = [None if i in hidden else n for i, n in enumerate(counts)]
        table = histogram.pool(analysis, {"pooled": {"counts": shown[1:-1], "below": shown[0], "above": shown[-1]}})
    elif kind == "summary":
        variables = {name: (m if not small(m["n"], pooled["_policy"]) else {"n": None, "sum": None, "sum_sq": None})
                     for name, m in pooled["variables"].items()}
        table = summary.pool(analysis, {"pooled": {"variables": variables}})
    else:
        raise SecureModeError(f"{kind!r} is not a one-round secure table")
    for row in table["rows"]:  # a pooled cell hidden by the pooled minimum: no site to name, no site's own cell
        hidden_here = row["pooled"].get("n") is None
        row["pooled"] = {**row["pooled"], "complete": True, "suppressed_at": [],
                         **({"suppressed": True} if hidden_here else {})}
        row["per_site"] = {}
    return {**table, "sites": list(ask.sites)}
