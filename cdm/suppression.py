"""Primary and secondary cell suppression of a table (Hundepool et al., *Statistical Disclosure
Control*, 2012, sec. 5.3): the one rule a site applies to its own tables (node/disclosure/policy.py)
and the coordinator to the pooled cells of a secure job (coordinator/secure.py).

A cell is small when it holds fewer than ``min_cell_count`` persons, zero included (so a hidden cell
never tells "someone is there").  In every line of the table (the table, and every slice with some
variables fixed, whose total another query can release) either no cell is hidden or the hidden
cells are at least two and add up to ``min_cell_count``; otherwise the smallest shown cell of the
line is hidden too, until stable, so a hidden cell cannot be recovered from the table's own margins.
"""

from __future__ import annotations

from itertools import combinations


def suppress_cells(keys: list[tuple], counts: list[int], min_cell_count: int) -> set[int]:
    """Indexes of the cells to hide (primary and secondary) of the table ``keys`` -> ``counts``."""

    def small(n: int) -> bool:
        return n < min_cell_count

    suppressed = {i for i, n in enumerate(counts) if small(n)}
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
            if not any(counts[i] > 0 for i in hidden):  # hidden zeros alone: nobody to protect in this line
                continue
            if len(hidden) >= 2 and sum(counts[i] for i in hidden) >= min_cell_count:
                continue
            # a line whose total is itself small is suppressed wherever it is released: no margin to leak
            if small(sum(counts[i] for i in line)):
                continue
            shown = sorted((i for i in line if i not in suppressed), key=lambda i: (counts[i] == 0, counts[i]))
            if shown:
                suppressed.add(shown[0])
                changed = True
    return suppressed
