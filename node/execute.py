"""Run one analysis request at this node: validate -> policy pre-checks -> compile -> run -> analyse
-> disclosure control -> response (shapes in docs/analysis-rounds.md).  Never raises: every failure
becomes a response with a stable code and no row data."""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from operator import itemgetter

import numpy as np
from sqlalchemy import Text, cast, func, select

from cdm import spec as S
from cdm.analyses import SiteData, site_kind
from cdm.analyses.kind import numeric
from cdm.compiler import Resolver, fetch_rows, resolve_variables, tune_for_queries
from cdm.compiler import frame as cohort_frame
from cdm.errors import reply_of, unexpected
from cdm.messages import ReplyStatus
from cdm.vocabulary import UnknownCode
from node import secure as node_secure
from node import state
from node.audit import AuditLog
from node.config import ConfigError
from node.disclosure import approvals, noise, release_history
from node.disclosure.policy import Policy, Refusal, recoverable_cells

log = logging.getLogger(__name__)


def _site(config) -> str:
    return config.site_name if config is not None else "local"


def run_request(engine, config, request: dict, locked: bool = False) -> dict:
    """Steps 3-12 of the disclosure order declared in node/disclosure/__init__.py: parse -> rate
    limit -> allowlist (and what noise cannot cover) -> approval -> budget -> compile (unknown codes)
    -> run (or reuse the same frame while the CDM is unchanged: FrameCache) -> analyse -> linked-release
    audit + differencing + site-wide auditor -> noise + budget charge -> release (docs/node-policy.md).  ``locked``: a round's ``beta`` must be the algorithm's (node/secure.py;
    the agent sets it for every request from the bus)."""
    request = request if isinstance(request, dict) else {}
    response = {"request_id": request.get("request_id"), "site": _site(config), "status": ReplyStatus.OK,
                "code": None, "message": "", "result": None, "warnings": []}
    spec, rows, requester, noise_settings = None, [], str(request.get("requester")), None
    ids = None  # the cohort, once it ran (an empty cohort is still one)
    try:
        tune_for_queries(engine)
        spec = S.parse_spec(request.get("spec"))
        if locked:
            node_secure.check_lock(request, config)
        policy, noise_settings = Policy.from_config(config), noise.NoiseSettings.from_config(config)
        if config is not None and state.count_and_note_request(
                state.state_engine(config), requester) > policy.max_requests_per_hour:
            raise Refusal("RATE_LIMIT", f"more than {policy.max_requests_per_hour} requests in the last hour")
        if spec.analysis.type not in policy.allowed_analyses:
            raise Refusal("NOT_ALLOWED", f"analysis {spec.analysis.type!r} is not allowed at this site")
        policy.check_limits(spec)
        secure = node_secure.check_request(spec, request, config)  # masked share of a sum (node/secure.py)
        if secure and noise_settings.on:
            raise Refusal("NOT_ALLOWED", "this site adds noise to what it releases; a secure share is exact")
        noise.precheck(spec, noise_settings)
        if config is not None:
            approvals.check(state.state_engine(config), policy, requester, spec)
            noise.check_budget(state.state_engine(config), requester, noise_settings)
        ids, values, unresolved = _cohort_frame(engine, config, spec)
        rows = ids  # rows touched, for the audit
        response["warnings"] = _unknown_codes(unresolved)
        if spec.unknown_codes == "refuse" and unresolved:
            response["warnings"] = []  # the refusal says it
            raise Refusal("UNKNOWN_CODE", "not in this node's vocabulary (the spec asks for every code to be "
                                          f"known): {', '.join(dict.fromkeys(unresolved))[:500]}")
        _require_known_index(spec, unresolved)
        if secure:  # nothing about this site alone leaves it: its share is masked, the pooled sum is checked
            public, summed = node_secure.analyse_secure(spec, len(ids), values, engine, _site(config), request,
                                                        policy)
            if config is not None and policy.differencing_k > 1 and len(ids):
                with state.release_lock:
                    _differencing(config, request, spec, ids, policy)
            response["result"] = node_secure.share(config, request, _site(config), public, summed, policy)
            response["message"] = "released (masked share)"
            _audit(config, request, {**response, "result": node_secure.audit_view(response["result"])}, spec, len(rows))
            return response
        result = analyse(spec, len(ids), values, policy, engine, _site(config), ids)
        attrition_sets = []  # person sets of an ATLAS count's released attrition (differencing too)
        if getattr(spec.cohort, "kind", None) == "atlas" and spec.analysis.type == "count":
            from node.atlas_attrition import attrition

            result["attrition"], attrition_sets = attrition(engine, spec.cohort, policy.min_cell_count, result.get("n"))
        if config is not None:
            with state.release_lock:  # check and record as one step (node/state.py)
                if spec.analysis.type == "quantile_round":  # suppress single thresholds, not the round
                    result = _audit_thresholds(config, policy, requester, request.get("request_id"), spec, ids,
                                               values, result)
                cells = _linked_check(config, requester, spec, ids, values, result, policy, noise_settings)
                if policy.differencing_k > 1 and len(ids):
                    for persons in [*attrition_sets, ids]:
                        _differencing(config, request, spec, persons, policy)
                if cells is not None:
                    state.record_cell_sets(state.state_engine(config), requester, request.get("request_id"), *cells)
                audited = _audited_sets(spec, ids, values, result)
                if audited is not None:  # site-wide, across researchers (node/disclosure/auditor.py)
                    release_history.check_and_record(state.state_engine(config), policy.min_cell_count, requester,
                                                     request.get("request_id"), audited[0] + attrition_sets,
                                                     audited[1])
        result = noise.privatize(spec, result, values, noise_settings)
        if noise_settings.on and config is not None:
            response["privacy"] = noise.charge(state.state_engine(config), requester, noise_settings)
        response["result"] = result
        response["message"] = "released"
    except Exception as exc:  # noqa: BLE001 - a node never leaks a traceback: cdm.errors.reply_of says what it may say
        if unexpected(exc):
            log.exception("request %s failed", response["request_id"])
        status, code, message = reply_of(exc)
        response.update(status=status, code=code, message=message)
        if isinstance(exc, Refusal):  # data-dependent refusals cost budget and are hidden cells
            if code in noise.CHARGED_REFUSALS and noise_settings is not None and noise_settings.on and config is not None:
                response["privacy"] = _charge_refusal(config, requester, noise_settings)
            if code == "MIN_CELL" and config is not None and spec is not None and ids is not None:
                # an empty cohort too: the same work as for a small one, so the time cannot tell them apart
                _note_refused_cohort(config, requester, request.get("request_id"), spec, ids, policy)
    _audit(config, request, response, spec, len(rows))
    return response


MAX_WARNINGS = 50


def _index_references(index) -> list[str]:
    """The vocabulary references (``SYSTEM:code``) that define the cohort's index event."""
    refs = list(getattr(index, "codes", None) or []) + list(getattr(index, "types", None) or [])
    if getattr(index, "code", None):
        refs.append(index.code)
    gene = getattr(index, "gene", None)
    if gene and ":" in gene:
        refs.append(gene)
    return refs


def _unknown_codes(unresolved) -> list[str]:
    """One warning per reference (``SYSTEM:code``) that this node's vocabulary cannot resolve."""
    unknown = list(dict.fromkeys(unresolved))
    return [f"UNKNOWN_CODE {ref}: not in this node's vocabulary" for ref in unknown[:MAX_WARNINGS]]


def _require_known_index(spec, unresolved) -> None:
    """Refuse ``UNKNOWN_CODE`` when none of the index event's codes resolves here: the cohort would be
    empty by construction, not by data, and a silent zero would be pooled as if it were one."""
    index_refs = _index_references(spec.cohort.index)
    if index_refs and set(index_refs) <= set(unresolved):
        raise Refusal("UNKNOWN_CODE", f"none of the index event's codes is in this node's vocabulary: "
                                      f"{', '.join(index_refs)[:500]}")


def _cell_sets(spec, ids, values, result) -> tuple[list, list] | None:
    """(released, suppressed) person-id sets of the count cells in ``result``, or None for analyses
    whose releases are not plain counts of persons (models and rounds: their own limits apply)."""
    kind = site_kind(spec.analysis.type)
    if kind is None or kind.person_cells is None:
        return None
    cells = kind.person_cells(spec.analysis, ids, values, result)
    return ([np.asarray(m, dtype=np.int64) for m, n in cells if n is not None],
            [np.asarray(m, dtype=np.int64) for m, n in cells if n is None])


def _audit_thresholds(config, policy, requester, request_id, spec, ids, values, result) -> dict:
    """A quantile round's counts, each audited site-wide on its own (in threshold order): a count
    that would, with the releases before it, isolate fewer than min_cell_count persons between two
    thresholds is suppressed like a small one."""
    x, keep = numeric(values[spec.analysis.variable], ids)
    thresholds = spec.analysis.thresholds
    engine = state.state_engine(config)
    # the small sides of the thresholds hidden by shape first: no count released below may give them away
    release_history.record_hidden(engine, policy.min_cell_count, requester, request_id,
                                  [side for i, n in enumerate(result["n_le"]) if n is None
                                   for side in (keep[x <= thresholds[i]], keep[x > thresholds[i]])])
    shown = [i for i, n in enumerate(result["n_le"]) if n is not None]
    ordered = sorted(shown, key=lambda i: thresholds[i])
    verdicts = release_history.release_what_is_safe(engine, policy.min_cell_count, requester, request_id,
                                                    [keep] + [keep[x <= thresholds[i]] for i in ordered])
    if not verdicts[0]:
        raise Refusal("DIFFERENCING", "together with results this site has already released (to anyone), the "
                                      "size of this cohort would determine a group of fewer than "
                                      f"{policy.min_cell_count} persons")
    hidden = {i for i, ok in zip(ordered, verdicts[1:]) if not ok}
    return {**result, "n_le": [None if i in hidden else n for i, n in enumerate(result["n_le"])],
            "suppressed": sorted(set(result["suppressed"]) | hidden)}


def _audited_sets(spec, ids, values, result) -> tuple[list, list] | None:
    """(released, suppressed) person sets whose sums this result releases, for the site-wide
    auditor: the count cells of :func:`_cell_sets`, and the complete rows of a model round."""
    a = spec.analysis
    if a.type == "quantile_round":  # audited threshold by threshold (_audit_thresholds)
        return None
    if _own_frame(spec) or a.type == "concordance":
        # survival, habitat and concordance rounds: their numbers (KM's at-risk counts, risk-set
        # sums, pair counts) are not all subset sums, but each is taken over the cohort, whose size
        # they release (at risk at time 0, n): the cohort is recorded, so that two researchers'
        # rounds over a cohort and the cohort less a few patients are refused like two counts
        return [ids], []
    if a.type in ("crossprod", "glm_round"):
        names = list(a.variables) if a.type == "crossprod" else \
            [a.outcome, *a.covariates] + ([a.weights] if a.weights else [])
        complete = np.ones(len(ids), dtype=bool)
        for name in names:
            complete &= np.array([v is not None for v in values[name]], dtype=bool)
        return [ids[complete]], []
    return _cell_sets(spec, ids, values, result)


def _charge_refusal(config, requester, settings) -> dict | None:
    """A data-dependent refusal costs what a release costs (node/disclosure/noise.py); over budget it still
    refuses, with nothing more to charge."""
    try:
        return noise.charge(state.state_engine(config), requester, settings)
    except Refusal:
        return None


def _note_refused_cohort(config, requester, request_id, spec, ids, policy) -> None:
    """A count refused as "< k" is a suppressed cell: later releases must not determine it."""
    if spec.analysis.type not in ("count", "summary", "quantile_round"):
        return
    with state.release_lock:
        release_history.record_hidden(state.state_engine(config), policy.min_cell_count, requester, request_id,
                                      [np.asarray(ids, dtype=np.int64)])


def _linked_check(config, requester, spec, ids, values, result, policy, noise_settings):
    """Refuse a result that, with everything already released to this requester, would disclose a
    suppressed cell exactly (node.disclosure.policy.recoverable_cells); the cell sets to record, or None."""
    if config is None or not policy.audit_linked_releases or noise_settings.on:
        return None  # noisy counts are not exact equations: the privacy budget bounds what they reveal
    cells = _cell_sets(spec, ids, values, result)
    if cells is None:
        return None
    shown, hidden = cells
    engine = state.state_engine(config)
    if not any(policy.small(len(h)) for h in hidden) and not state.has_small_hidden_cell(
            engine, requester, policy.min_cell_count):
        return cells  # no small cell suppressed for this requester yet: nothing to disclose
    old_shown, old_hidden = state.released_cell_sets(engine, requester)
    if recoverable_cells(old_shown + shown, old_hidden + hidden, policy.min_cell_count):
        raise Refusal("DIFFERENCING", "together with results already released to you, this result would "
                                      "reveal a suppressed small cell (linked tables)")
    return cells


def _differencing(config, request, spec, ids, policy):
    """Refuse a patient set within k (but not 0) of one already released to this requester.

    A set this requester was already given (same digest) passes without a comparison: it was checked
    against every earlier set when it was first released, every later set was checked against it, and
    giving it again discloses nothing new."""
    engine, requester = state.state_engine(config), str(request.get("requester"))
    ids = state.person_set(ids)
    digest = state.set_digest(ids)
    if state.already_released(engine, requester, digest):
        return
    if state.nearest_difference(engine, requester, ids, policy.differencing_k) is not None:
        raise Refusal("DIFFERENCING", f"cohort differs from one already released to {requester} "
                                      f"by fewer than {policy.differencing_k} patients")
    state.record_release(engine, requester, S.cohort_hash(spec), ids, digest)


def _audit(config, request, response, spec, rows_touched):
    if config is None:  # library use without a site (no node.toml): nothing to audit into
        return
    try:
        AuditLog.for_config(config).append(
            request_id=response["request_id"], requester=str(request.get("requester")),
            spec_hash=S.spec_hash(spec) if spec is not None else None,
            # what was asked, in full: cohort, variables and the round's parameters (beta, thresholds)
            spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True) if spec is not None else None,
            decision=response["status"], code=response["code"], rows_touched=rows_touched,
            released=response["result"],  # after noise: what left the node, never the true counts
            **{k: response[k] for k in ("warnings", "privacy") if response.get(k)})
    except OSError:
        log.exception("audit append failed")


def _decoded(column, decode) -> tuple:
    """``(decode(v) for v in column)`` with one call per distinct value (a frame column holds a few
    categories or codes repeated over 100k persons; the look-ups run in C).  A tuple: the column
    may be shared by later requests through :data:`FRAMES`, so nothing may change it."""
    table = {v: decode(v) for v in dict.fromkeys(column)}
    return tuple(map(table.__getitem__, column))


# -- the cohort frame, and its reuse while the CDM is unchanged -----------------------------------


def _own_frame(spec) -> bool:
    """Whether the analysis's site half reads frames of its own (survival times, intervals, biopsies)."""
    kind = site_kind(spec.analysis.type)
    return kind is not None and kind.own_frame


def _cohort_frame(engine, config, spec) -> tuple[np.ndarray, dict, list]:
    """(person ids in person order, decoded variable columns, unresolvable references) of ``spec``'s
    cohort frame at this node: compiled and run, or reused from :data:`FRAMES`."""
    site = _site(config)
    # KM, Cox and habitat rounds read their variables from frames of their own (cdm.round_frames);
    # here they need only the cohort's persons (differencing, rows touched)
    names = [] if _own_frame(spec) else list(
        dict.fromkeys(n for _, n in S.analysis_variables(spec.analysis)))
    use_cache = FRAMES.max_cells > 0 and _cache_enabled(config)
    key = version = None
    if use_cache:
        key = _frame_key(spec, names, site)
        version = FRAMES.data_version(engine)  # read *before* the query: see FrameCache
        hit = FRAMES.get(engine, key, version)
        if hit is not None:
            return hit[0], hit[1], hit[2] + _own_frame_unresolved(engine, spec)
    frame = cohort_frame(spec, names, Resolver(engine), site, index_date=False)  # nothing here reads the index date
    with engine.connect() as conn:
        rows = fetch_rows(conn, frame.query)
    # one column at a time (zip(*rows) over 100k rows is 5x slower: it steps 100k iterators at once)
    columns = [tuple(map(itemgetter(k), rows)) for k in range(frame.offset + len(frame.names))]
    ids = np.array(columns[0], dtype=np.int64)  # person order (ORDER BY)
    ids.setflags(write=False)
    values = {name: _decoded(columns[frame.offset + i], dec)
              for i, (name, dec) in enumerate(zip(frame.names, frame.decoders))}
    unresolved = tuple(frame.resolver.unresolved)
    if use_cache and version is not None:
        FRAMES.put(engine, key, version, (ids, values, unresolved))
    return ids, values, unresolved + _own_frame_unresolved(engine, spec)


def _own_frame_unresolved(engine, spec) -> tuple:
    """The unknown codes of the variables a KM/Cox/habitat round reads in frames of its own: not in
    this cohort frame (nor in its cache key), still reported with this response's warnings."""
    if not _own_frame(spec):
        return ()
    resolver = Resolver(engine)
    resolve_variables([spec.variables[n] for _, n in S.analysis_variables(spec.analysis)], resolver)
    return tuple(resolver.unresolved)


def _cache_enabled(config) -> bool:
    """``[query] frame_cache`` in node.toml (default true)."""
    if config is None:
        return True
    value = config.section("query").get("frame_cache", True)
    if not isinstance(value, bool):
        raise ConfigError(f"[query] frame_cache must be true or false, not {value!r}")
    return value


def _frame_key(spec, names, site) -> str:
    """Everything the frame's SQL and decoders depend on besides the CDM's contents."""
    return json.dumps({"cohort": spec.cohort.model_dump(mode="json"), "site": site, "names": names,
                       "variables": {n: spec.variables[n].model_dump(mode="json") for n in names}},
                      sort_keys=True, default=str)


class FrameCache:
    """Cohort frames already computed at this node, reused while the CDM has not changed.

    Why: the same cohort is read again and again — every round of a multi-round analysis (quantile
    bisection 4-14 rounds, GLM Newton 5-6, with a new threshold or coefficients but the same
    frame), a site's dry run followed by the federated run, a dashboard's repeated count.  Only the
    CDM read is reused: every request still passes rate limit, allowlist, approval, budget, the
    analysis with its suppression, the linked-release audit, differencing, noise and the audit log.

    Correctness rests on the *data version*, read before the frame's query runs and compared on
    every look-up; a frame is reused only when it is unchanged, i.e. nothing was committed to the
    CDM since before that query started (a commit in between changes it too, so a frame is never
    newer than its version claims):

    * SQLite (file): ``PRAGMA data_version`` on a connection of its own that never writes; SQLite
      changes it whenever any other connection, in any process, commits to the database.
    * PostgreSQL: ``pg_current_snapshot()``.  Equal snapshots mean that no transaction has been
      given an id, nor has one finished, since: the same committed data (cluster-wide, so writes
      elsewhere only cost a recomputation, never a stale answer).
    * anything else (in-memory SQLite, other dialects): never cached.

    Bounded: least recently used frames go first once more than ``max_cells`` values (persons x
    columns) are held; ``max_cells = 0`` (or ``[query] frame_cache = false`` in node.toml) turns
    it off."""

    def __init__(self, max_cells: int = 2_000_000):
        self.max_cells = max_cells
        self._lock = threading.Lock()
        self._per_engine: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.hits = self.misses = 0

    def _slot(self, engine) -> dict:
        with self._lock:
            slot = self._per_engine.get(engine)
            if slot is None:
                slot = self._per_engine[engine] = {"frames": OrderedDict(), "cells": 0, "watch": None,
                                                   "watch_lock": threading.Lock()}
            return slot

    def data_version(self, engine):
        """The CDM's current data version, or None when it cannot be known (then nothing is cached)."""
        try:
            if engine.dialect.name == "sqlite":
                return self._sqlite_version(engine)
            if engine.dialect.name == "postgresql":
                with engine.connect() as conn:
                    return conn.execute(select(cast(func.pg_current_snapshot(), Text))).scalar_one()
        except Exception:  # noqa: BLE001 - an old server, a standby...: correct without the cache
            log.debug("no data version for %s", engine.url, exc_info=True)
        return None

    def _sqlite_version(self, engine):
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        slot = self._slot(engine)
        with slot["watch_lock"]:
            if slot["watch"] is None:
                watch = engine.raw_connection()
                watch.detach()  # kept out of the pool: it must never be the one that writes
                slot["watch"] = watch
            cursor = slot["watch"].cursor()
            try:
                cursor.execute("PRAGMA data_version")  # a fixed statement: no request text
                return ("sqlite", cursor.fetchone()[0])
            finally:
                cursor.close()

    def get(self, engine, key, version):
        if version is None:
            return None
        slot = self._slot(engine)
        with self._lock:
            entry = slot["frames"].get(key)
            if entry is None or entry[0] != version:
                self.misses += 1
                return None
            slot["frames"].move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, engine, key, version, frame) -> None:
        ids, values, _ = frame
        cells = len(ids) * (1 + len(values))
        if version is None or cells > self.max_cells:
            return
        slot = self._slot(engine)
        with self._lock:
            old = slot["frames"].pop(key, None)
            if old is not None:
                slot["cells"] -= old[2]
            # a new version makes every other frame of this CDM stale: drop them now
            for stale in [k for k, e in slot["frames"].items() if e[0] != version]:
                slot["cells"] -= slot["frames"].pop(stale)[2]
            slot["frames"][key] = (version, frame, cells)
            slot["cells"] += cells
            while slot["cells"] > self.max_cells and slot["frames"]:
                slot["cells"] -= slot["frames"].popitem(last=False)[1][2]

    def clear(self) -> None:
        with self._lock:
            for slot in self._per_engine.values():
                slot["frames"].clear()
                slot["cells"] = 0


FRAMES = FrameCache()


def analyse(spec: S.Spec, n_cohort: int, values: dict, policy: Policy, engine=None, site: str = "local",
            ids: np.ndarray | None = None) -> dict:
    """The released result of ``spec.analysis``: its kind's site half (:mod:`cdm.analyses`) under
    this site's ``policy``; kinds with frames of their own compile them from ``engine``."""
    a = spec.analysis
    kind = site_kind(a.type)
    if kind is None:
        raise Refusal("NOT_ALLOWED", f"analysis {a.type!r} is not available at this node yet")
    if kind.own_frame and engine is None:
        raise Refusal("NOT_ALLOWED", f"{a.type} needs the site's CDM")
    ids = np.arange(n_cohort) if ids is None else ids
    try:
        return kind.site(spec, SiteData(ids, values, engine, site), policy)
    except (ValueError, UnknownCode) as exc:  # a kernel's check on the data (never row values in it)
        if not kind.checks_data:
            raise
        raise Refusal("BAD_SPEC", f"{a.type}: {exc}") from None
