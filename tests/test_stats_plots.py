"""KM curves with risk tables and forest plots, written as PNG from real federated results."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner
from lifelines.datasets import load_rossi

from coordinator import plots
from coordinator.stats import run_analysis
from test_stats_sites import network, split_uneven

TIME = {"event": {"kind": "death"}}


@pytest.fixture(scope="module")
def results():
    df = load_rossi().rename(columns={"week": "time", "arrest": "event"})
    ask, _ = network(split_uneven(df, 4, seed=1))
    km = run_analysis({"type": "km", "time": TIME, "group": "fin", "bin_days": 2}, ask)
    cox = run_analysis({"type": "cox", "time": TIME, "covariates": ["fin", "age", "prio"]}, ask)
    glm = run_analysis({"type": "glm", "family": "binomial", "outcome": "event", "covariates": ["fin", "age"]}, ask)
    return {"km": km, "cox": cox, "glm": glm}


@pytest.mark.parametrize("kind", ["km", "cox", "glm"])
def test_plots_are_real_pngs(results, kind, tmp_path):
    path = plots.plot_job({"job_id": "j", "pooled": results[kind]}, f"rossi {kind}", tmp_path / f"{kind}.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01  # drawn, not blank


def test_result_command_writes_plots(results, tmp_path):
    from coordinator import commands

    job = {"job_id": "0123456789abcdef", "status": "done", "message": "", "spec": {"analysis": {"type": "km"}},
           "pooled": results["km"], "per_site": []}
    commands._show(job, False, None, str(tmp_path / "out"))
    written = list((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["km-01234567.png"]
    assert "--plots" in CliRunner().invoke(commands.result_command, ["--help"]).output


def test_nothing_to_plot_is_none(tmp_path):
    assert plots.km_plot({"groups": {}}, "empty", tmp_path / "x.png") is None
    assert plots.forest_plot({"type": "cox", "coefficients": []}, "empty", tmp_path / "y.png") is None


def test_text_rendering_of_results(results):
    from coordinator.report import render_job
    from coordinator.stats.text import render

    text = render_job({"job_id": "j", "status": "done", "spec": {"analysis": {"type": "cox"}}, "pooled": results["cox"]})
    assert "Cox (pooled, efron ties)" in text and "exp(coef)" in text and "prio" in text and "converged" in text
    assert "log-rank chi2" in render(results["km"]) and "odds_ratio" in render(results["glm"])
    assert render({"type": "crosstab", "rows": []}) is None and render({"type": "cox"}) is None  # falls back to JSON
