"""Exact pooled results across three real nodes (needs the node's execution layer, node.execute)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from federation import network_fixture
from test_e2e_federation import AGE, BY_SEX, COUNT, SITES, expected_sex, fill

BIN = Path(sys.executable).parent


network = network_fixture("e2e-results", SITES, fill)


def test_count_pools_exactly_and_a_small_site_refuses_rather_than_reporting_zero(network):
    job = network.run({**COUNT, "federation": {"secure": False}})  # plain: each site applies its own minimum
    per_site = {s["site"]: s for s in job["per_site"]}
    assert per_site["site-c"]["status"] == "refused" and per_site["site-c"]["code"] == "MIN_CELL"
    assert per_site["site-c"]["result"] is None                   # 3 persons: nothing released, never 0
    assert job["status"] == "partial" and "site-c (refused: MIN_CELL)" in job["message"]
    row = job["pooled"]["rows"][0]
    assert row["per_site"] == {"site-a": {"n": 40}, "site-b": {"n": 23}}
    assert row["pooled"] == {"n": 63, "complete": True, "suppressed_at": []}
    assert job["pooled"]["sites"] == ["site-a", "site-b"]
    # by default (3 sites: secure) site-c's 3 persons count in the pooled sum, which passes the minimum
    secure = network.run(COUNT)
    assert secure["status"] == "done" and secure["pooled"]["aggregation"] == "secure"
    assert secure["pooled"]["rows"][0]["pooled"]["n"] == 66 and secure["pooled"]["rows"][0]["per_site"] == {}


def test_crosstab_and_summary_through_the_cli(network, tmp_path):
    out = tmp_path / "by_sex.csv"
    spec = tmp_path / "by_sex.json"
    spec.write_text(json.dumps({**BY_SEX, "federation": {"secure": False}}))  # plain: each site's own cells
    run = subprocess.run([str(BIN / "radfed"), "query", "run", str(spec), "--csv", str(out)], capture_output=True,
                         text=True, env=network.env(), timeout=120)
    assert run.returncode == 0, run.stderr
    lines = out.read_text().splitlines()
    for sex in ("M", "F"):
        a, b = expected_sex("site-a")[sex], expected_sex("site-b")[sex]
        assert f"{sex},site-a,{a},true,ok," in lines and f"{sex},site-b,{b},true,ok," in lines
        assert f"{sex},pooled,{a + b}," in "\n".join(lines)
    spec.write_text(json.dumps({**AGE, "federation": {"secure": False}}))
    run = subprocess.run([str(BIN / "radfed"), "query", "run", str(spec), "--json"], capture_output=True, text=True,
                         env=network.env(), timeout=120)
    assert run.returncode == 0, run.stderr
    row = json.loads(run.stdout)["pooled"]["rows"][0]
    released = [s for s in row["per_site"].values() if s.get("n") is not None]
    assert row["pooled"]["n"] == sum(s["n"] for s in released) >= 63 - 3
    assert row["pooled"]["mean"] == pytest.approx(sum(s["sum"] for s in released) / row["pooled"]["n"], rel=1e-12)
