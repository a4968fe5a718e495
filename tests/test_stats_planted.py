"""The generator's planted time-varying Cox effect, recovered by the federated fit through real nodes.

``radfed-node synth`` plants, for EGFR-mutant lung adenocarcinoma, a hazard of death
``h0 exp(beta TF(t))`` with ``TF(t)`` the last measured ctDNA tumour fraction (``beta`` in
ground_truth.json).  Each site is ingested into its own SQLite CDM through the FHIR ingest path;
every round is answered by the real node (``node.execute.run_request``: compile, counting-process
intervals, disclosure policy) and pooled by ``coordinator.stats``.  The planted beta must lie in
the federated fit's 95% interval (and the effect must be detected).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdm.db import open_engine
from coordinator.stats import run_analysis
from node.execute import run_request
from node.synth.generator import query_references

pytestmark = pytest.mark.slow  # generates and ingests two synthetic sites (~15-30 s)
NODE = str(Path(sys.executable).parent / "radfed-node")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    subprocess.run([NODE, "synth", "--sites", "2", "--patients", "360", "--seed", "3", "--no-dicom",
                    "--no-bad-records", str(root / "data")], check=True, capture_output=True, timeout=300)
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    engines = {}
    for site in truth["sites"]:
        db = str(root / f"{site['name']}.sqlite")
        for args in (["init"], ["vocab", "load-map", str(root / "data" / site["vocabulary_map"])],
                     ["ingest", "fhir", str(root / "data" / site["fhir_dir"])]):
            subprocess.run([NODE, "--db", db, *args], check=True, capture_output=True, timeout=300)
        engines[site["name"]] = open_engine(db)
    yield truth, engines
    for engine in engines.values():
        engine.dispose()


def test_planted_time_varying_ctdna_effect_is_recovered(sites):
    truth, engines = sites
    refs = query_references()
    spec = {"cohort": {"index": {"kind": "condition", "codes": [refs["lung_adenocarcinoma"]]}},
            "variables": {"tf": {"kind": "measurement", "code": refs["ctdna_tumour_fraction"], "time_varying": True,
                                 "window": {"start": -3650}}}}
    refusals = []

    def ask(analysis):
        answers = []
        for site, engine in engines.items():
            reply = run_request(engine, None, {"request_id": "r", "requester": "test", "job_id": "j",
                                               "spec": {**spec, "analysis": analysis}})
            if reply["status"] == "ok":
                answers.append({**reply["result"], "_site": site})
            else:
                refusals.append((site, reply["code"], reply["message"]))
        return answers

    result = run_analysis({"type": "cox", "time": {"event": {"kind": "death"}}, "covariates": ["tf"],
                           "time_varying": True, "mode": "stratified"}, ask)
    assert not refusals and result["sites"] == sorted(engines)
    row = result["coefficients"][0]
    planted = truth["effect_sizes"]["lung"]["cox"]["beta"]
    assert row["coef_lower_95"] < planted < row["coef_upper_95"], row
    assert row["p"] < 1e-3 and result["convergence"]["converged"]
