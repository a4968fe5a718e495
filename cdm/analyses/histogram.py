"""``histogram``: persons per bin of a numeric variable, with the counts below and above the edges.

Site: ``numpy.histogram`` counts (the last bin closed), small cells suppressed with their secondary
cells.  Central: exact sums per bin (:mod:`cdm.analyses.tables`)."""

from __future__ import annotations

import numpy as np

from cdm import spec as S
from cdm.analyses import tables
from cdm.analyses.kind import Kind, numeric


def site(spec: S.Spec, data, policy) -> dict:
    a = spec.analysis
    x = np.array([v for v in data.values[a.variable] if v is not None], dtype=float)
    counts, _ = np.histogram(x, bins=a.edges)
    cells = [int((x < a.edges[0]).sum()), *map(int, counts), int((x > a.edges[-1]).sum())]
    hidden = policy.suppress([(i,) for i in range(len(cells))], cells)
    shown = [None if i in hidden else c for i, c in enumerate(cells)]
    return {"counts": shown[1:-1], "below": shown[0], "above": shown[-1], "suppressed": sorted(hidden)}


def person_cells(a, ids, values, result) -> list:
    x, keep = numeric(values[a.variable], ids)
    edges = np.asarray(a.edges, dtype=float)
    inner = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2) + 1  # last bin closed
    cell = np.where(x < edges[0], 0, np.where(x > edges[-1], len(edges), inner))
    shown = [result["below"], *result["counts"], result["above"]]
    return [(keep[cell == i], n) for i, n in enumerate(shown)]


def pool(analysis: dict, results: dict[str, dict]) -> dict:
    edges = analysis.get("edges")
    keys: list[tuple] = []
    per_bin: dict[tuple, dict[str, int | None]] = {}
    for site_name, result in results.items():
        counts = list(result.get("counts", []))
        names = ([f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(len(edges) - 1)] if edges
                 else [f"bin {i}" for i in range(len(counts))])
        for label, n in [("below", result.get("below"))] + list(zip(names, counts)) + [("above", result.get("above"))]:
            if (label,) not in per_bin:
                keys.append((label,))
            per_bin.setdefault((label,), {})[site_name] = tables.count(n)
    return {"type": "histogram", "columns": ["bin"], "sites": sorted(results),
            "rows": tables.count_rows(per_bin, keys)}


KIND = Kind(model=S.HistogramAnalysis, site=site, pool=pool, person_cells=person_cells)
