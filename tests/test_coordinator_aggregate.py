"""Pooling is exact, and a suppressed cell is never counted or shown as zero."""

from __future__ import annotations

import math
import random

from coordinator import aggregate
from coordinator.report import render_job
from coordinator.results import job_csv


def test_count_pools_exactly_and_marks_suppression():
    pooled = aggregate.pool({"type": "count"}, {"a": {"n": 120}, "b": {"n": 7}, "c": {"n": None}})
    row = pooled["rows"][0]
    assert row["pooled"] == {"n": 127, "complete": False, "suppressed_at": ["c"]}
    assert row["per_site"]["c"] == {"n": None, "suppressed": True}
    full = aggregate.pool({"type": "count"}, {"a": {"n": 120}, "b": {"n": 7}})
    assert full["rows"][0]["pooled"] == {"n": 127, "complete": True, "suppressed_at": []}


def test_crosstab_sums_cells_and_keeps_suppressed_cells_marked():
    results = {
        "a": {"cells": [{"key": ["PFA", "M"], "n": 10}, {"key": ["PFB", "M"], "n": None}], "suppressed": [["PFB", "M"]]},
        "b": {"cells": [{"key": ["PFA", "M"], "n": 6}, {"key": ["PFB", "M"], "n": 8}, {"key": ["PFB", "F"], "n": 5}]},
    }
    pooled = aggregate.pool({"type": "crosstab", "by": ["subtype", "sex"]}, results)
    rows = {tuple(r["key"]): r for r in pooled["rows"]}
    assert rows[("PFA", "M")]["pooled"]["n"] == 16 and rows[("PFA", "M")]["pooled"]["complete"]
    assert rows[("PFB", "M")]["pooled"] == {"n": 8, "complete": False, "suppressed_at": ["a"]}
    assert rows[("PFB", "F")]["per_site"] == {"b": {"n": 5}}   # absent at a: not listed, not suppressed
    text = render_job({"job_id": "j", "status": "done", "spec": {"analysis": {"type": "crosstab"}}, "pooled": pooled,
                       "per_site": []})
    assert ">=8*" in text and "suppressed" in text
    pfb_line = next(line for line in text.splitlines() if line.startswith("PFB") and " M " in line)
    assert " 0 " not in pfb_line
    csv_text = job_csv({"pooled": pooled})
    assert "PFB,M,a,suppressed,false" in csv_text and "PFB,M,pooled,8,false" in csv_text


def test_summary_moments_equal_the_pooled_data():
    rng = random.Random(7)
    sites = {s: [rng.gauss(1.3, 0.4) for _ in range(n)] for s, n in (("a", 50), ("b", 13), ("c", 200))}
    results = {s: {"variables": {"adc": {"n": len(v), "sum": math.fsum(v), "sum_sq": math.fsum(x * x for x in v)}}}
               for s, v in sites.items()}
    pooled = aggregate.pool({"type": "summary", "variables": ["adc"]}, results)["rows"][0]["pooled"]
    everything = [x for v in sites.values() for x in v]
    mean = math.fsum(everything) / len(everything)
    variance = math.fsum((x - mean) ** 2 for x in everything) / (len(everything) - 1)
    assert pooled["n"] == 263 and pooled["complete"]
    assert math.isclose(pooled["mean"], mean, rel_tol=1e-12)
    assert math.isclose(pooled["variance"], variance, rel_tol=1e-9)


def test_summary_with_a_suppressed_site_is_flagged_not_diluted():
    results = {"a": {"adc": {"n": 10, "sum": 12.0, "sum_sq": 15.0}}, "b": {"adc": {"n": None, "sum": None, "sum_sq": None}}}
    row = aggregate.pool({"type": "summary"}, results)["rows"][0]
    assert row["pooled"]["n"] == 10 and row["pooled"]["suppressed_at"] == ["b"] and not row["pooled"]["complete"]
    assert row["per_site"]["b"]["n"] is None and row["per_site"]["b"]["suppressed"]


def test_histogram_adds_bins():
    results = {"a": {"counts": [1, None, 3], "below": 0, "above": 2}, "b": {"counts": [5, 6, 7], "below": 1, "above": 0}}
    rows = aggregate.pool({"type": "histogram", "edges": [0, 1, 2, 3]}, results)["rows"]
    by = {r["key"][0]: r["pooled"] for r in rows}
    assert by["[0, 1)"]["n"] == 6 and by["[1, 2)"] == {"n": 6, "complete": False, "suppressed_at": ["a"]}
    assert by["below"]["n"] == 1 and by["above"]["n"] == 2
