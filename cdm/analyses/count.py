"""``count``: the number of persons in the cohort.

Site: the cohort size, refused ``MIN_CELL`` when it is small.  Central: the exact sum over the
sites; a site's refusal leaves the pooled count incomplete (:mod:`cdm.analyses.tables`)."""

from __future__ import annotations

from cdm import spec as S
from cdm.analyses import tables
from cdm.analyses.kind import Kind
from cdm.errors import Refusal


def site(spec: S.Spec, data, policy) -> dict:
    if policy.small(len(data.ids)):
        raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} persons")
    return {"n": len(data.ids)}


def person_cells(a, ids, values, result) -> list:
    return [(ids, result["n"])]


def pool(analysis: dict, results: dict[str, dict]) -> dict:
    per_site = {site: tables.count(r.get("n")) for site, r in results.items()}
    return {"type": "count", "columns": [], "sites": sorted(results),
            "rows": [{"key": ["persons"], "pooled": tables.pool_counts(per_site),
                      "per_site": {s: tables.cell(n) for s, n in per_site.items()}}]}


KIND = Kind(model=S.CountAnalysis, site=site, pool=pool, person_cells=person_cells)
