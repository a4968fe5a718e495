"""Manual approval of requests by the site administrator: ``[policy] approval`` in node.toml.

``approval = "none"`` (default) runs every allowed request; ``"all"`` or a list of analysis types
(``["crossprod", "cox_round"]``) holds each *new* request of those types in a queue in the node's
state database and refuses it with ``PENDING_APPROVAL`` until the administrator decides with
``radfed-node approvals approve ID`` or ``deny ID`` (then ``DENIED``).

What is approved is the pair (requester, :func:`cdm.spec.approval_key` of the spec): the spec without
its per-round numbers (``beta``), so one approval covers every Newton iteration of a model, while any
change to the cohort, the variables or the analysis parameters is a new request.  Every decision is
appended to the hash-chained audit log (node/audit.py) next to the requests themselves.
"""

from __future__ import annotations

import getpass
import json

import click
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from cdm import spec as S
from cdm.errors import BadInput
from node import state
from node.audit import AuditLog
from node.disclosure.policy import Policy, Refusal

T = state.approval_requests
STATUSES = ("pending", "approved", "denied")


class ApprovalError(BadInput, ValueError):
    """An administrator's command names no request, or a decision that cannot be made."""


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize(spec: S.Spec) -> str:
    """One line for the administrator: analysis, its parameters (no beta), the cohort's shape."""
    params = spec.analysis.model_dump(mode="json", exclude={"type", "beta"}, exclude_defaults=True)
    index = spec.cohort.index.model_dump(mode="json", exclude_defaults=True)
    kind = index.pop("kind", getattr(spec.cohort.index, "kind", "?"))
    codes = index.get("codes") or index.get("code") or index.get("gene") or ""
    parts = [spec.analysis.type + (" " + " ".join(f"{k}={_short(v)}" for k, v in params.items()) if params else ""),
             f"index {kind}{' ' + _short(codes) if codes else ''}"]
    c = spec.cohort
    if c.inclusion or c.exclusion:
        parts.append(f"{len(c.inclusion)} inclusion / {len(c.exclusion)} exclusion criteria")
    if c.age or c.sex:
        age = f"age {'' if c.age.min is None else c.age.min}-{'' if c.age.max is None else c.age.max}" if c.age else ""
        parts.append(" ".join(x for x in (age, f"sex {','.join(c.sex)}" if c.sex else "") if x))
    return "; ".join(parts)[:300]


def check(engine, policy: Policy, requester: str, spec: S.Spec) -> None:
    """Let an approved (or approval-free) request through; queue or refuse the rest."""
    if not policy.needs_approval(spec.analysis.type):
        return
    key, now = S.approval_key(spec), state.utcnow()
    where = (T.c.approval_key == key, T.c.requester == requester)
    with engine.begin() as conn:
        row = conn.execute(select(T).where(*where)).mappings().first()
        if row is not None:
            conn.execute(update(T).where(T.c.id == row["id"]).values(last_seen=now, times_asked=T.c.times_asked + 1))
    if row is None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(T).values(
                    approval_key=key, requester=requester, analysis_type=spec.analysis.type,
                    summary=summarize(spec), spec=S.canonical_json(spec.model_dump(mode="json", by_alias=True)),
                    status="pending", first_seen=now, last_seen=now, times_asked=1))
        except IntegrityError:  # the same request arrived twice at once: the other one queued it
            pass
        with engine.connect() as conn:
            row = conn.execute(select(T).where(*where)).mappings().one()
    if row["status"] == "approved":
        return
    if row["status"] == "denied":
        reason = f": {row['note']}" if row["note"] else ""
        raise Refusal("DENIED", f"the site administrator denied this request (approval {row['id']}){reason}")
    raise Refusal("PENDING_APPROVAL", f"this {spec.analysis.type} request awaits the site's approval "
                                      f"(approval {row['id']}); the site administrator approves it with "
                                      f"`radfed-node approvals approve {row['id']}`")


def list_requests(engine, status: str | None = None) -> list[dict]:
    query = select(T).order_by(T.c.id)
    if status is not None:
        query = query.where(T.c.status == status)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def decide(engine, approval_id: int, decision: str, note: str | None, by: str) -> dict:
    """Set request ``approval_id`` to ``approved`` or ``denied``; returns the updated row."""
    if decision not in ("approved", "denied"):
        raise ApprovalError(f"a decision is approved or denied, not {decision!r}")
    with engine.begin() as conn:
        row = conn.execute(select(T).where(T.c.id == approval_id)).mappings().first()
        if row is None:
            raise ApprovalError(f"no approval request {approval_id} (see `radfed-node approvals list`)")
        conn.execute(update(T).where(T.c.id == approval_id).values(
            status=decision, note=note, decided_by=by, decided_at=state.utcnow()))
        return dict(conn.execute(select(T).where(T.c.id == approval_id)).mappings().one())


# -- command line -----------------------------------------------------------------------------------


def _config(ctx):
    return ctx.find_root().obj


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


@click.group("approvals")
def approvals_group():
    """Requests held for the site administrator's approval ([policy] approval in node.toml)."""


@approvals_group.command("list")
@click.option("--status", type=click.Choice(STATUSES + ("all",)), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with each full spec.")
@click.pass_context
def approvals_list(ctx, status, as_json):
    """Pending, approved and denied requests."""
    rows = list_requests(state.state_engine(_config(ctx)), None if status == "all" else status)
    if as_json:
        out = [{"id": r["id"], "status": r["status"], "requester": r["requester"],
                "analysis_type": r["analysis_type"], "summary": r["summary"], "spec": json.loads(r["spec"]),
                "first_seen": _iso(r["first_seen"]), "last_seen": _iso(r["last_seen"]),
                "times_asked": r["times_asked"], "decided_at": _iso(r["decided_at"]),
                "decided_by": r["decided_by"], "note": r["note"]} for r in rows]
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no approval requests" + ("" if status == "all" else f" with status {status}"))
        return
    for r in rows:
        click.echo(f"{r['id']:>4}  {r['status']:<8}  {r['requester']}  {r['analysis_type']}  "
                   f"first seen {_iso(r['first_seen'])} (asked {r['times_asked']}x)")
        click.echo(f"      {r['summary']}")
        if r["note"]:
            click.echo(f"      note: {r['note']}")


def _administrator() -> str:
    """Who decided, for the record (the operating-system account running the command)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _decide_command(ctx, approval_id: int, decision: str, note: str | None) -> None:
    config = _config(ctx)
    by = _administrator()
    try:
        row = decide(state.state_engine(config), approval_id, decision, note, by)
    except ApprovalError as exc:
        raise click.ClickException(str(exc)) from None
    AuditLog.for_config(config).append(
        event="approval", approval_id=row["id"], requester=row["requester"], approval_key=row["approval_key"],
        analysis_type=row["analysis_type"], decision=decision, code=None, note=note, decided_by=by)
    click.echo(f"approval {row['id']} {decision}: {row['requester']} {row['summary']}")


def _decision(verb: str, decision: str, note: str, note_help: str, summary: str) -> click.Command:
    """``approvals VERB ID [--NOTE TEXT]``: decide one queued request (the two decisions differ only
    in their words)."""

    @approvals_group.command(verb, help=summary)
    @click.argument("approval_id", type=int)
    @click.option(f"--{note}", "note", help=note_help)
    @click.pass_context
    def command(ctx, approval_id, note):
        _decide_command(ctx, approval_id, decision, note)

    return command


approvals_approve = _decision("approve", "approved", "note", "Why (kept in the queue and the audit log).",
                              "Let request ID (and its later rounds) run for its requester.")
approvals_deny = _decision("deny", "denied", "reason", "Told to the requester with the DENIED refusal.",
                           "Refuse request ID with DENIED from now on.")
