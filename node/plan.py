"""The site's answer to a dry run: what it *would* run for a spec, and whether its policy allows it.

A dry-run request carries the spec under ``plan`` (never under ``spec``), so a node that predates
dry runs refuses it as malformed instead of running it.  The node parses the spec, checks it against
its policy exactly as a real request is checked (allowlist, parameter limits, what noise cannot
cover), says whether the site approves it by hand, and compiles it to the SQL its CDM would run, with
the concept ids its own vocabulary resolves the codes to.  No person row is read and nothing about
the data is released; the dry run is written to the site's audit log like every request.

:func:`site_description` is what the node's heartbeat says about it: the analyses its policy allows
(with their parameter limits), manual approval, the smallest released cell, noise, and its database.
"""

from __future__ import annotations

import logging

from cdm import spec as S
from cdm.compiler import compile_spec
from cdm.errors import reply_of, unexpected
from cdm.messages import ReplyStatus
from cdm.wire import make_response
from node.audit import AuditLog
from node.config import ConfigError
from node.disclosure import noise
from node.disclosure.policy import Policy, Refusal

log = logging.getLogger(__name__)

MAX_SQL = 20_000


def site_description(engine, config) -> dict:
    """The policy facts a coordinator shows researchers (no data): for the heartbeat."""
    try:
        policy, settings = Policy.from_config(config), noise.NoiseSettings.from_config(config)
    except ConfigError as exc:
        return {"policy_error": str(exc)[:300]}
    approval = policy.approval if isinstance(policy.approval, str) else list(policy.approval)
    return {"backend": engine.dialect.name,
            "policy": {"allowed_analyses": list(policy.allowed_analyses), "limits": policy.limits,
                       "approval": approval, "min_cell_count": policy.min_cell_count,
                       "min_rows_model": policy.min_rows_model, "noise": settings.mechanism}}


def _sql(frame, dialect) -> tuple[str, dict]:
    compiled = frame.query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in compiled.params.items()}
    return str(compiled)[:MAX_SQL], params


def plan_request(engine, config, request: dict) -> dict:
    """The dry-run response: ``result`` = {analysis, allowed, refusal, approval, sql, parameters, ...}."""
    site = config.site_name if config is not None else "local"
    response = make_response(request, site, ReplyStatus.OK, None, "dry run: nothing was run or released")
    spec = None
    try:
        spec = S.parse_spec(request.get("plan"))
        policy, settings = Policy.from_config(config), noise.NoiseSettings.from_config(config)
        kind = spec.analysis.type
        refusal = None
        try:
            if kind not in policy.allowed_analyses:
                raise Refusal("NOT_ALLOWED", f"analysis {kind!r} is not allowed at this site")
            policy.check_limits(spec)
            noise.precheck(spec, settings)
        except Refusal as exc:
            refusal = {"code": exc.code, "message": exc.message}
        frame = compile_spec(spec, engine, site)
        sql, params = _sql(frame, engine.dialect)
        unknown = list(dict.fromkeys(frame.resolver.unresolved))
        response["result"] = {
            "analysis": kind, "allowed": refusal is None, "refusal": refusal,
            "approval": "manual" if policy.needs_approval(kind) else "automatic",
            "backend": engine.dialect.name, "sql": sql, "parameters": params, "unknown_codes": unknown,
            "min_cell_count": policy.min_cell_count, "noise": settings.mechanism,
        }
        if refusal is not None:
            response["message"] = f"dry run: this site would refuse ({refusal['code']}: {refusal['message']})"
    except Exception as exc:  # noqa: BLE001 - a node never leaks a traceback: cdm.errors.reply_of says what it may say
        if unexpected(exc):
            log.exception("dry run %s failed", response["request_id"])
        status, code, message = reply_of(exc)
        response.update(status=status, code=code, message=message)
    if config is not None:
        try:
            AuditLog.for_config(config).append(
                request_id=response["request_id"], requester=str(request.get("requester")), kind="dry_run",
                spec_hash=S.spec_hash(spec) if spec is not None else None, decision=response["status"],
                code=response["code"], rows_touched=0, released=None)
        except OSError:
            log.exception("audit append failed")
    return response
