"""``radfed demo`` end to end, as a new user runs it (smaller, so the suite stays quick)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator import demo_specs

pytestmark = pytest.mark.slow  # synth + ingest + nats-server + coordinator + three nodes (~1 min)

BIN = Path(sys.executable).parent


def test_demo_runs_every_analysis_serves_the_console_and_stops_cleanly(tmp_path):
    demo = subprocess.Popen([str(BIN / "radfed"), "demo", "--serve", "--patients", "240", "--out", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines, deadline = [], time.monotonic() + 280
    try:
        while time.monotonic() < deadline and demo.poll() is None:
            lines.append(demo.stdout.readline())
            if "serving the network and the web console until Ctrl-C" in lines[-1]:
                break
        shown = "".join(lines)
        console = re.search(r"web console: (http://127\.0\.0\.1:\d+/console/) \(sign in with the researcher token (rf_\S+)\)",
                            shown)
        assert console, shown[-3000:]
        browser = httpx.Client(follow_redirects=True, timeout=30)
        page = browser.post(console.group(1) + "sign-in", data={"token": console.group(2)})
        assert page.status_code == 200 and "Jobs" in page.text and page.text.count("status-done") >= 5
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = demo.communicate(timeout=60)
    run_stdout = shown + out
    assert demo.returncode == 0, run_stdout[-3000:] + err[-3000:]
    titles = [title for title, _ in demo_specs.specs({})]
    for title in titles:
        assert f"==> federated {title}" in run_stdout
    assert run_stdout.count("job ") == len(titles)
    assert "failed" not in run_stdout  # every job done or partial (a refusing site is named, not fatal)
    assert "site-1 FHIR: 12 files:" in run_stdout and "quarantined" in run_stdout
    plots = sorted((tmp_path / "demo" / "plots").glob("*.png"))
    assert len(plots) >= 5 and all(p.stat().st_size > 10_000 for p in plots)
    assert "==> done in" in run_stdout
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the demo left processes running"
