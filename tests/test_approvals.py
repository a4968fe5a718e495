"""The manual approval queue end to end: requests through run_request, decisions through the real
``radfed-node approvals`` command line, every decision in the audit log."""

from __future__ import annotations

import json

from click.testing import CliRunner

from node.audit import AuditLog
from node.cli import main
from test_policy_attacks import N_PERSONS, ask, load_persons, write_config

CROSSTAB = {"type": "crosstab", "by": ["sex", "mdm2"]}


def _cli(config, *args):
    return CliRunner().invoke(main, ["--config", str(config.path), "approvals", *args])


def test_pending_then_approved_runs_and_denied_is_refused(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, '[policy]\napproval = ["crosstab"]\ndifferencing_k = 0\n')
    assert "no approval requests" in _cli(config, "list").output

    pending = ask(sqlite_cdm, config, CROSSTAB, requester="alice")
    assert pending["status"] == "refused" and pending["code"] == "PENDING_APPROVAL" and pending["result"] is None
    assert "radfed-node approvals approve 1" in pending["message"]
    assert ask(sqlite_cdm, config, CROSSTAB, requester="alice")["code"] == "PENDING_APPROVAL"  # asked again: same entry
    assert ask(sqlite_cdm, config, {"type": "count"}, requester="alice")["result"] == {"n": N_PERSONS}  # not listed

    listed = json.loads(_cli(config, "list", "--json").output)
    assert len(listed) == 1
    entry = listed[0]
    assert (entry["id"], entry["status"], entry["requester"], entry["analysis_type"], entry["times_asked"]) == \
        (1, "pending", "alice", "crosstab", 2)
    assert "crosstab" in entry["summary"] and "sex" in entry["summary"] and "RADFED:progression" in entry["summary"]
    assert entry["first_seen"] and entry["spec"]["analysis"]["by"] == ["sex", "mdm2"]
    text = _cli(config, "list").output
    assert "pending" in text and "alice" in text and "first seen" in text

    done = _cli(config, "approve", "1", "--note", "IRB 2026-17")
    assert done.exit_code == 0 and "approval 1 approved" in done.output
    released = ask(sqlite_cdm, config, CROSSTAB, requester="alice")
    assert released["status"] == "ok" and released["result"]["cells"]

    # the same spec from someone else is a separate request; denied, it stays refused with the reason
    assert ask(sqlite_cdm, config, CROSSTAB, requester="bob")["code"] == "PENDING_APPROVAL"
    assert _cli(config, "deny", "2", "--reason", "too fine for this site").exit_code == 0
    denied = ask(sqlite_cdm, config, CROSSTAB, requester="bob")
    assert denied["code"] == "DENIED" and "too fine for this site" in denied["message"] and denied["result"] is None
    # a different crosstab is a different request again
    assert ask(sqlite_cdm, config, {"type": "crosstab", "by": ["sex"]}, requester="alice")["code"] == "PENDING_APPROVAL"

    statuses = {e["id"]: e["status"] for e in json.loads(_cli(config, "list", "--json").output)}
    assert statuses == {1: "approved", 2: "denied", 3: "pending"}
    assert "bob" in _cli(config, "list", "--status", "denied").output
    assert "alice" not in _cli(config, "list", "--status", "denied").output

    missing = _cli(config, "approve", "99")
    assert missing.exit_code != 0 and "no approval request 99" in missing.output
    bad = _cli(config, "approve", "one")
    assert bad.exit_code != 0 and "not a valid integer" in bad.output

    log = AuditLog.for_config(config)
    decisions = [e for e in log.entries() if e.get("event") == "approval"]
    assert [(d["approval_id"], d["decision"], d["requester"]) for d in decisions] == \
        [(1, "approved", "alice"), (2, "denied", "bob")]
    assert decisions[0]["note"] == "IRB 2026-17" and decisions[0]["decided_by"]
    codes = [e["code"] for e in log.entries() if e.get("event") != "approval"]
    assert codes == ["PENDING_APPROVAL", "PENDING_APPROVAL", None, None, "PENDING_APPROVAL", "DENIED",
                     "PENDING_APPROVAL"]
    verify = CliRunner().invoke(main, ["--config", str(config.path), "audit", "verify"])
    assert verify.exit_code == 0 and "audit log intact" in verify.output


def test_one_approval_covers_every_newton_round(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path, '[policy]\napproval = "all"\ndifferencing_k = 0\n')
    glm = {"type": "glm_round", "family": "binomial", "outcome": "mdm2", "covariates": ["tf"], "beta": [0.0, 0.0]}
    assert ask(sqlite_cdm, config, glm)["code"] == "PENDING_APPROVAL"
    assert ask(sqlite_cdm, config, {**glm, "beta": [0.5, -0.1]})["code"] == "PENDING_APPROVAL"
    assert len(json.loads(_cli(config, "list", "--json").output)) == 1  # beta is not part of what is approved
    assert _cli(config, "approve", "1").exit_code == 0
    later = ask(sqlite_cdm, config, {**glm, "beta": [-1.2, 0.03]})
    assert later["code"] not in ("PENDING_APPROVAL", "DENIED")  # past the queue (the analysis itself decides)
    other_model = {"type": "glm_round", "family": "gaussian", "outcome": "tf", "covariates": ["mdm2"]}
    assert ask(sqlite_cdm, config, other_model)["code"] == "PENDING_APPROVAL"  # a new model: a new request
    assert len(json.loads(_cli(config, "list", "--json").output)) == 2


def test_no_approval_by_default(sqlite_cdm, tmp_path):
    load_persons(sqlite_cdm)
    config = write_config(tmp_path)
    assert ask(sqlite_cdm, config, CROSSTAB)["status"] == "ok"
    assert json.loads(_cli(config, "list", "--json").output) == []


def test_through_the_federation_pending_then_approved_and_warnings_shown(tmp_path):
    """Real nats-server, coordinator and two node agents: the coordinator's ``radfed result`` shows
    site-a's PENDING_APPROVAL (with how to approve) and site-b's UNKNOWN_CODE warning; once site-a's
    administrator approves with ``radfed-node approvals approve``, the same spec runs there."""
    import subprocess
    import sys
    from pathlib import Path

    from federation import Network
    from test_e2e_federation import CODE, fill

    bin_dir = Path(sys.executable).parent
    net = Network(tmp_path, ["site-a", "site-b"])
    toml = net.bundles["site-a"].node_toml
    toml.write_text(toml.read_text() + '\n[policy]\napproval = "all"\n')
    try:
        for site in net.site_names:
            net.make_cdm(site, fill)
        net.start_coordinator()
        for site in net.site_names:
            net.start_node(site, wait=False)
        net.wait_online(net.site_names)
        spec = {"cohort": {"index": {"kind": "condition", "codes": [f"SNOMED:{CODE}", "SNOMED:999999999"]}},
                "analysis": {"type": "count"}}
        job = net.run(spec)
        sites = {s["site"]: s for s in job["per_site"]}
        assert sites["site-a"]["code"] == "PENDING_APPROVAL" and sites["site-b"]["result"] == {"n": 23}
        shown = subprocess.run([str(bin_dir / "radfed"), "result", job["job_id"]], capture_output=True, text=True,
                               env=net.env(), timeout=60)
        assert shown.returncode == 0, shown.stderr
        line_a = next(x for x in shown.stdout.splitlines() if x.startswith("site-a"))
        line_b = next(x for x in shown.stdout.splitlines() if x.startswith("site-b"))
        assert "PENDING_APPROVAL" in line_a and "radfed-node approvals approve 1" in line_a
        assert "UNKNOWN_CODE SNOMED:999999999: not in this node's vocabulary" in line_b
        approve = subprocess.run([str(bin_dir / "radfed-node"), "--config", str(toml), "approvals", "approve", "1"],
                                 capture_output=True, text=True, timeout=60)
        assert approve.returncode == 0, approve.stderr
        again = {s["site"]: s for s in net.run(spec)["per_site"]}
        assert again["site-a"]["status"] == "ok" and again["site-a"]["result"] == {"n": 40}
    finally:
        net.close()
