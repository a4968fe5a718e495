"""``radfed demo`` end to end, as a new user runs it (smaller, so the suite stays quick)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import demo_specs

pytestmark = pytest.mark.slow  # synth + ingest + nats-server + coordinator + three nodes (~1 min)

BIN = Path(sys.executable).parent


def test_demo_runs_every_analysis_and_stops_cleanly(tmp_path):
    run = subprocess.run([str(BIN / "radfed"), "demo", "--patients", "240", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    titles = [title for title, _ in demo_specs.specs({})]
    for title in titles:
        assert f"==> federated {title}" in run.stdout
    assert run.stdout.count("job ") == len(titles)
    assert "failed" not in run.stdout  # every job done or partial (a refusing site is named, not fatal)
    assert "site-1 FHIR: 12 files:" in run.stdout and "quarantined" in run.stdout
    plots = sorted((tmp_path / "demo" / "plots").glob("*.png"))
    assert len(plots) >= 5 and all(p.stat().st_size > 10_000 for p in plots)
    assert "==> done in" in run.stdout
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the demo left processes running"
