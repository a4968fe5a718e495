"""Run one analysis request at this node: validate -> policy pre-checks -> compile -> run -> analyse
-> disclosure control -> response (shapes in docs/analysis-rounds.md).  Never raises: every failure
becomes a response with a stable code and no row data."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from cdm import spec as S
from cdm.compiler import compile_spec
from node import approvals, noise, state
from node.audit import AuditLog
from node.config import ConfigError
from node.policy import Policy, Refusal, recoverable_cells, suppress_cells
from node.rounds_exec import ROUND_TYPES, analyse_round

log = logging.getLogger(__name__)


def _site(config) -> str:
    return config.site_name if config is not None else "local"


def run_request(engine, config, request: dict) -> dict:
    """Order: parse -> rate limit -> allowlist (and what noise cannot cover) -> approval -> budget ->
    compile (unknown codes) -> run -> analyse -> linked-release audit + differencing -> noise + budget
    charge -> release (docs/node-policy.md)."""
    request = request if isinstance(request, dict) else {}
    response = {"request_id": request.get("request_id"), "site": _site(config), "status": "ok",
                "code": None, "message": "", "result": None, "warnings": []}
    spec, rows, requester = None, [], str(request.get("requester"))
    try:
        spec = S.parse_spec(request.get("spec"))
        policy, noise_settings = Policy.from_config(config), noise.NoiseSettings.from_config(config)
        if config is not None and state.count_and_note_request(
                state.state_engine(config), requester) > policy.max_requests_per_hour:
            raise Refusal("RATE_LIMIT", f"more than {policy.max_requests_per_hour} requests in the last hour")
        if spec.analysis.type not in policy.allowed_analyses:
            raise Refusal("NOT_ALLOWED", f"analysis {spec.analysis.type!r} is not allowed at this site")
        noise.precheck(spec, noise_settings)
        if config is not None:
            approvals.check(state.state_engine(config), policy, requester, spec)
            noise.check_budget(state.state_engine(config), requester, noise_settings)
        frame = compile_spec(spec, engine, _site(config))
        response["warnings"] = _unknown_codes(frame.resolver)
        _require_known_index(spec, frame.resolver)
        with engine.connect() as conn:
            rows = conn.execute(frame.query).all()
        values = {name: [dec(r[2 + i]) for r in rows] for i, (name, dec) in enumerate(zip(frame.names, frame.decoders))}
        result = analyse(spec, len(rows), values, policy, engine, _site(config))
        cells = _linked_check(config, requester, spec, rows, values, result, policy, noise_settings)
        if config is not None and policy.differencing_k > 1 and rows:
            _differencing(config, request, spec, np.array([r[0] for r in rows], dtype=np.int64), policy)
        if cells is not None:
            state.record_cell_sets(state.state_engine(config), requester, request.get("request_id"), *cells)
        result = noise.privatize(spec, result, values, noise_settings)
        if noise_settings.on and config is not None:
            response["privacy"] = noise.charge(state.state_engine(config), requester, noise_settings)
        response["result"] = result
        response["message"] = "released"
    except S.SpecError as exc:
        response.update(status="refused", code="BAD_SPEC", message=str(exc)[:2000])
    except Refusal as exc:
        response.update(status="refused", code=exc.code, message=exc.message)
    except ConfigError as exc:  # the site's node.toml, not the request, is wrong: say so, release nothing
        response.update(status="error", code="INTERNAL", message=f"this node's configuration is invalid: {exc}")
    except Exception:  # noqa: BLE001 - a node never leaks a traceback
        log.exception("request %s failed", response["request_id"])
        response.update(status="error", code="INTERNAL", message="internal error at the node (see the site log)")
    _audit(config, request, response, spec, len(rows))
    return response


MAX_WARNINGS = 50


def _index_references(index) -> list[str]:
    """The vocabulary references (``SYSTEM:code``) that define the cohort's index event."""
    refs = list(getattr(index, "codes", None) or [])
    if getattr(index, "code", None):
        refs.append(index.code)
    gene = getattr(index, "gene", None)
    if gene and ":" in gene:
        refs.append(gene)
    return refs


def _unknown_codes(resolver) -> list[str]:
    """One warning per reference (``SYSTEM:code``) that this node's vocabulary cannot resolve."""
    unknown = list(dict.fromkeys(resolver.unresolved))
    return [f"UNKNOWN_CODE {ref}: not in this node's vocabulary" for ref in unknown[:MAX_WARNINGS]]


def _require_known_index(spec, resolver) -> None:
    """Refuse ``UNKNOWN_CODE`` when none of the index event's codes resolves here: the cohort would be
    empty by construction, not by data, and a silent zero would be pooled as if it were one."""
    index_refs = _index_references(spec.cohort.index)
    if index_refs and set(index_refs) <= set(resolver.unresolved):
        raise Refusal("UNKNOWN_CODE", f"none of the index event's codes is in this node's vocabulary: "
                                      f"{', '.join(index_refs)[:500]}")


def _cell_sets(spec, rows, values, result) -> tuple[list, list] | None:
    """(released, suppressed) person-id sets of the count cells in ``result``, or None for analyses
    whose releases are not plain counts of persons (models and rounds: their own limits apply)."""
    a, ids = spec.analysis, np.array([r[0] for r in rows], dtype=np.int64)
    if a.type == "count":
        return [ids], []
    if a.type == "crosstab":
        labels = [{v: _bin(v, a.bins[n]) for v in set(values[n]) if v is not None} if n in a.bins else None
                  for n in a.by]  # one _bin per distinct value, as analyse() keys them
        members: dict[tuple, list] = {}
        for pid, row in zip(ids.tolist(), zip(*(values[n] for n in a.by))):
            if all(v is not None for v in row):
                members.setdefault(tuple(v if m is None else m[v] for v, m in zip(row, labels)), []).append(pid)
        cells = [(members.get(tuple(c["key"]), []), c["n"]) for c in result["cells"]]
    elif a.type == "histogram":
        x, keep = _numeric(values[a.variable], ids)
        edges = np.asarray(a.edges, dtype=float)
        inner = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2) + 1  # last bin closed
        cell = np.where(x < edges[0], 0, np.where(x > edges[-1], len(edges), inner))
        shown = [result["below"], *result["counts"], result["above"]]
        cells = [(keep[cell == i], n) for i, n in enumerate(shown)]
    elif a.type == "quantile_round":
        x, keep = _numeric(values[a.variable], ids)
        cells = [(keep, result["n"])] + [(keep[x <= t], n) for t, n in zip(a.thresholds, result["n_le"])]
        # an n_le is hidden when either side of t is small: guard the persons above t as well
        cells += [(keep[x > t], None) for t, n in zip(a.thresholds, result["n_le"]) if n is None]
    elif a.type == "summary":
        cells = [(_numeric(values[name], ids)[1], cell["n"]) for name, cell in result["variables"].items()]
    else:
        return None
    return ([np.asarray(m, dtype=np.int64) for m, n in cells if n is not None],
            [np.asarray(m, dtype=np.int64) for m, n in cells if n is None])


def _numeric(column, ids):
    keep = np.array([v is not None for v in column], dtype=bool)
    return np.array([v for v in column if v is not None], dtype=float), ids[keep]


def _linked_check(config, requester, spec, rows, values, result, policy, noise_settings):
    """Refuse a result that, with everything already released to this requester, would disclose a
    suppressed cell exactly (node.policy.recoverable_cells); the cell sets to record, or None."""
    if config is None or not policy.audit_linked_releases or noise_settings.on:
        return None  # noisy counts are not exact equations: the privacy budget bounds what they reveal
    cells = _cell_sets(spec, rows, values, result)
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
    """Refuse a patient set within k (but not 0) of one already released to this requester."""
    engine, requester = state.state_engine(config), str(request.get("requester"))
    if state.nearest_difference(engine, requester, ids, policy.differencing_k) is not None:
        raise Refusal("DIFFERENCING", f"cohort differs from one already released to {requester} "
                                      f"by fewer than {policy.differencing_k} patients")
    state.record_release(engine, requester, S.cohort_hash(spec), ids)


def _audit(config, request, response, spec, rows_touched):
    if config is None:  # library use without a site (no node.toml): nothing to audit into
        return
    try:
        AuditLog.for_config(config).append(
            request_id=response["request_id"], requester=str(request.get("requester")),
            spec_hash=S.spec_hash(spec) if spec is not None else None,
            decision=response["status"], code=response["code"], rows_touched=rows_touched,
            released=response["result"],  # after noise: what left the node, never the true counts
            **{k: response[k] for k in ("warnings", "privacy") if response.get(k)})
    except OSError:
        log.exception("audit append failed")


def _complete(values: dict, names: list[str]) -> list[tuple]:
    cols = [values[n] for n in names]
    return [row for row in zip(*cols) if all(v is not None for v in row)]


def _bin(value, edges):
    i = int(np.searchsorted(edges, value, side="right")) - 1
    return f"[{edges[i]}, {edges[i + 1]})" if 0 <= i < len(edges) - 1 else ("below" if i < 0 else "above")


def analyse(spec: S.Spec, n_cohort: int, values: dict, policy: Policy, engine=None, site: str = "local") -> dict:
    """The released result of ``spec.analysis``; round analyses (survival, models, concordance,
    habitat) compile their own frames from ``engine`` in :mod:`node.rounds_exec`."""
    a = spec.analysis
    if a.type in ROUND_TYPES:
        return analyse_round(spec, values, policy, engine, site)
    if a.type == "count":
        if policy.small(n_cohort):
            raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} persons")
        return {"n": n_cohort}
    if a.type == "crosstab":
        rows = _complete(values, a.by)
        keyed = [tuple(_bin(v, a.bins[n]) if n in a.bins else v for n, v in zip(a.by, row)) for row in rows]
        counts = Counter(keyed)
        keys = sorted(counts, key=lambda k: tuple(map(str, k)))
        hidden = suppress_cells(keys, [counts[k] for k in keys], policy)
        return {"cells": [{"key": list(k), "n": None if i in hidden else counts[k]} for i, k in enumerate(keys)],
                "suppressed": [list(keys[i]) for i in sorted(hidden)]}
    if a.type == "summary":
        out, suppressed = {}, []
        for name in a.variables:
            x = np.array([v for v in values[name] if v is not None], dtype=float)
            if policy.small(len(x)):
                out[name] = {"n": None, "sum": None, "sum_sq": None}
                suppressed.append(name)
            else:
                out[name] = {"n": int(len(x)), "sum": float(x.sum()), "sum_sq": float((x * x).sum())}
        return {"variables": out, "suppressed": suppressed}
    if a.type == "quantile_round":
        x = np.array([v for v in values[a.variable] if v is not None], dtype=float)
        if policy.small(len(x)):
            raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} values")
        n_le = [int((x <= t).sum()) for t in a.thresholds]
        hidden = [i for i, k in enumerate(n_le) if policy.small(k) or policy.small(len(x) - k)]
        return {"n": int(len(x)), "n_le": [None if i in hidden else k for i, k in enumerate(n_le)], "suppressed": hidden}
    if a.type == "histogram":
        x = np.array([v for v in values[a.variable] if v is not None], dtype=float)
        counts, _ = np.histogram(x, bins=a.edges)
        cells = [int((x < a.edges[0]).sum()), *map(int, counts), int((x > a.edges[-1]).sum())]
        hidden = suppress_cells([(i,) for i in range(len(cells))], cells, policy)
        shown = [None if i in hidden else c for i, c in enumerate(cells)]
        return {"counts": shown[1:-1], "below": shown[0], "above": shown[-1],
                "suppressed": sorted(hidden)}
    if a.type == "crossprod":
        rows = np.array(_complete(values, a.variables), dtype=float).reshape(-1, len(a.variables))
        n, p = rows.shape
        if n < policy.min_rows_model or n < policy.rows_per_parameter * p:
            raise Refusal("MIN_ROWS", f"needs at least {max(policy.min_rows_model, policy.rows_per_parameter * p)} complete rows")
        return {"n": int(n), "sums": rows.sum(0).tolist(), "cross": (rows.T @ rows).tolist()}
    raise Refusal("NOT_ALLOWED", f"analysis {a.type!r} is not available at this node yet")
