"""Run one analysis request at this node: validate -> policy pre-checks -> compile -> run -> analyse
-> disclosure control -> response (shapes in docs/analysis-rounds.md).  Never raises: every failure
becomes a response with a stable code and no row data."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from cdm import spec as S
from cdm.compiler import compile_spec
from node.audit import AuditLog
from node.policy import Policy, Refusal, suppress_cells
from node import state

log = logging.getLogger(__name__)


def _site(config) -> str:
    return config.site_name if config is not None else "local"


def run_request(engine, config, request: dict) -> dict:
    request = request if isinstance(request, dict) else {}
    response = {"request_id": request.get("request_id"), "site": _site(config), "status": "ok",
                "code": None, "message": "", "result": None}
    spec, rows = None, []
    try:
        spec = S.parse_spec(request.get("spec"))
        policy = Policy.from_config(config)
        if config is not None and state.count_and_note_request(
                state.state_engine(config), str(request.get("requester"))) > policy.max_requests_per_hour:
            raise Refusal("RATE_LIMIT", f"more than {policy.max_requests_per_hour} requests in the last hour")
        if spec.analysis.type not in policy.allowed_analyses:
            raise Refusal("NOT_ALLOWED", f"analysis {spec.analysis.type!r} is not allowed at this site")
        frame = compile_spec(spec, engine, _site(config))
        with engine.connect() as conn:
            rows = conn.execute(frame.query).all()
        values = {name: [dec(r[2 + i]) for r in rows] for i, (name, dec) in enumerate(zip(frame.names, frame.decoders))}
        result = analyse(spec, len(rows), values, policy)
        if config is not None and policy.differencing_k > 1 and rows:
            _differencing(config, request, spec, np.array([r[0] for r in rows], dtype=np.int64), policy)
        response["result"] = result
        response["message"] = "released"
    except S.SpecError as exc:
        response.update(status="refused", code="BAD_SPEC", message=str(exc)[:2000])
    except Refusal as exc:
        response.update(status="refused", code=exc.code, message=exc.message)
    except Exception:  # noqa: BLE001 - a node never leaks a traceback
        log.exception("request %s failed", response["request_id"])
        response.update(status="error", code="INTERNAL", message="internal error at the node (see the site log)")
    _audit(config, request, response, spec, len(rows))
    return response


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
            released=response["result"])
    except OSError:
        log.exception("audit append failed")


def _complete(values: dict, names: list[str]) -> list[tuple]:
    cols = [values[n] for n in names]
    return [row for row in zip(*cols) if all(v is not None for v in row)]


def _bin(value, edges):
    i = int(np.searchsorted(edges, value, side="right")) - 1
    return f"[{edges[i]}, {edges[i + 1]})" if 0 <= i < len(edges) - 1 else ("below" if i < 0 else "above")


def analyse(spec: S.Spec, n_cohort: int, values: dict, policy: Policy) -> dict:
    a = spec.analysis
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
