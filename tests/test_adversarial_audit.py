"""Audit log (issue 16): every request is stored with its canonical spec and round parameters, so a
site administrator can see what was asked -- including the beta of a crafted model round that was
refused -- with ``radfed-node audit show ID``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from node.cli import main
from tests.adversarial import ask, load_site, site_config


def test_audit_show_gives_the_spec_and_the_rounds_parameters(sqlite_cdm, tmp_path):
    load_site(sqlite_cdm)
    config = site_config(tmp_path)
    beta = [-3600.0, 60.0, 0.0]  # family 5's crafted coefficients: what the administrator must be able to see
    r = ask(sqlite_cdm, config, {"type": "glm_round", "family": "binomial", "outcome": "response",
                                 "covariates": ["age", "rare"], "beta": beta}, request_id="crafted-1")
    assert r["status"] == "refused"
    ask(sqlite_cdm, config, {"type": "quantile_round", "variable": "adc", "thresholds": [700.0, 900.0]},
        request_id="q-1")
    run = CliRunner().invoke(main, ["--config", str(config.path), "audit", "show", "crafted-1"])
    assert run.exit_code == 0, run.output
    entry = json.loads(run.output)
    assert entry["spec"]["analysis"]["beta"] == beta and entry["code"] == r["code"]
    assert entry["spec"]["cohort"]["index"]["codes"] == ["RADFED:progression"]
    run = CliRunner().invoke(main, ["--config", str(config.path), "audit", "show", "2"])
    assert json.loads(run.output)["spec"]["analysis"]["thresholds"] == [700.0, 900.0]
    missing = CliRunner().invoke(main, ["--config", str(config.path), "audit", "show", "nope"])
    assert missing.exit_code == 1 and "no audit entry" in missing.output
    verify = CliRunner().invoke(main, ["--config", str(config.path), "audit", "verify"])
    assert verify.exit_code == 0
