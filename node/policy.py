"""Disclosure control from node.toml ``[policy]``: small cells, secondary suppression, model limits.

Cells with ``0 < n < min_cell_count`` are suppressed (released as ``null``).  Secondary suppression:
every *line* of a table (the whole table, and for 2+ dimensions every row/column slice whose total
can be learnt from a lower-dimensional query) must have either no suppressed cell or suppressed cells
that are >= 2 in number and sum to at least ``min_cell_count``; otherwise the smallest released cell of
the line is suppressed too, repeated until stable — so no suppressed cell is recoverable from margins.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


class Refusal(Exception):
    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")


@dataclass
class Policy:
    min_cell_count: int = 5
    min_rows_model: int = 20
    rows_per_parameter: int = 10
    differencing_k: int = 5
    max_requests_per_hour: int = 1000
    allowed_analyses: tuple = ("count", "crosstab", "summary", "quantile_round", "histogram", "crossprod",
                               "km_round", "cox_round", "glm_round")

    @classmethod
    def from_config(cls, config) -> "Policy":
        raw = config.section("policy") if config is not None else {}
        p = cls()
        for name in ("min_cell_count", "min_rows_model", "rows_per_parameter", "differencing_k",
                     "max_requests_per_hour"):
            if name in raw:
                setattr(p, name, int(raw[name]))
        if "allowed_analyses" in raw:
            p.allowed_analyses = tuple(raw["allowed_analyses"])
        return p

    def small(self, n: int) -> bool:
        return 0 < n < self.min_cell_count


def suppress_cells(keys: list[tuple], counts: list[int], policy: Policy) -> set[int]:
    """Indexes of cells to suppress (primary and secondary)."""
    suppressed = {i for i, n in enumerate(counts) if policy.small(n)}
    dims = len(keys[0]) if keys else 0
    lines: list[list[int]] = [list(range(len(keys)))]
    for fixed in range(1, dims):
        for dims_fixed in combinations(range(dims), fixed):
            groups: dict[tuple, list[int]] = {}
            for i, k in enumerate(keys):
                groups.setdefault(tuple(k[d] for d in dims_fixed), []).append(i)
            lines += list(groups.values())
    changed = True
    while changed:
        changed = False
        for line in lines:
            hidden = [i for i in line if i in suppressed]
            if not hidden:
                continue
            if len(hidden) >= 2 and sum(counts[i] for i in hidden) >= policy.min_cell_count:
                continue
            # a line whose total is itself small is suppressed wherever it is released: no margin to leak
            if policy.small(sum(counts[i] for i in line)):
                continue
            shown = sorted((i for i in line if i not in suppressed), key=lambda i: (counts[i] == 0, counts[i]))
            if shown:
                suppressed.add(shown[0])
                changed = True
    return suppressed
