"""node/disclosure/auditor.py alone: its verdicts equal a brute-force rank test over persons."""

from __future__ import annotations

import numpy as np
import pytest

from node.disclosure.auditor import ReleaseAuditor
from node.disclosure.policy import Refusal


def _rank(rows) -> int:
    return int(np.linalg.matrix_rank(np.array(rows, dtype=float))) if rows else 0


def _brute_force_disclosed(released: list[np.ndarray], hidden: list[np.ndarray], n: int, k: int) -> bool:
    """Over persons (no atoms, no modular arithmetic): is the sum over some group of persons that the
    released sets cannot tell apart, of 1..k-1 persons, or a hidden cell, in the row space?"""
    rows = [np.isin(np.arange(n), s).astype(float) for s in released]
    if not rows:
        return False
    pattern = {}
    for p in range(n):
        pattern.setdefault(tuple(r[p] for r in rows), []).append(p)
    groups = [g for key, g in pattern.items() if any(key)]
    targets = [np.isin(np.arange(n), g).astype(float) for g in groups if len(g) < k]
    targets += [np.isin(np.arange(n), h).astype(float) for h in hidden if 0 < len(h) < k]
    base = _rank(rows)
    return any(_rank(rows + [t]) == base for t in targets)


@pytest.mark.parametrize("seed", range(12))
def test_verdicts_equal_a_rank_test_over_persons(seed):
    rng = np.random.default_rng(seed)
    n, k = 40, 3
    auditor = ReleaseAuditor(k)
    released, hidden, refused = [], [], 0
    for _ in range(40):
        lo, hi = sorted(rng.integers(0, n, 2))
        s = np.arange(lo, hi + 1) if rng.random() < 0.5 else np.flatnonzero(rng.random(n) < 0.6)
        h = [np.flatnonzero(rng.random(n) < 0.05)] if rng.random() < 0.2 else []
        verdict = auditor.check_and_commit([s], h)
        expected = _brute_force_disclosed(released + [s], hidden + h, n, k)
        # a hidden cell already determined before this release is not this release's to protect
        already = bool(h) and _brute_force_disclosed(released, hidden + h, n, k) and not \
            _brute_force_disclosed(released, hidden, n, k)
        if not already:
            assert verdict.safe == (not expected), (seed, lo, hi)
        if verdict.safe:
            released.append(s)
            hidden += [x for x in h if 0 < len(x) < k and not already]
        else:
            refused += 1
    assert refused > 0  # the sequence exercised refusals
    assert not _brute_force_disclosed(released, hidden, n, k)  # what went out determines nothing small


def test_repeats_and_unions_of_released_cells_do_not_grow_the_basis():
    auditor = ReleaseAuditor(5)
    a, b = np.arange(0, 50), np.arange(50, 120)
    assert auditor.check_and_commit([a, b]).safe
    rank = auditor.rank
    assert auditor.check_and_commit([np.arange(0, 120)]).safe and auditor.check_and_commit([a]).safe
    assert auditor.rank == rank


def test_history_is_bounded_fail_closed():
    auditor = ReleaseAuditor(5, max_entries=60 * 10)
    with pytest.raises(Refusal) as refusal:
        for i in range(100):
            auditor.check_and_commit([np.arange(i * 10, i * 10 + 60)])
    assert refusal.value.code == "AUDIT_FULL"
    assert auditor.rank * auditor.atoms <= 600


def test_the_reduction_shortcuts_equal_plain_modular_arithmetic():
    """reduce() sums few basis rows directly and most rows as the kept sum of all rows less the
    others, with Mersenne folds instead of %: both equal v - sum(v[pivot_i] row_i) mod P computed
    with Python integers."""
    from node.disclosure.auditor import P

    rng = np.random.default_rng(7)
    auditor = ReleaseAuditor(2)
    for _ in range(30):
        auditor.commit([np.flatnonzero(rng.random(200) < rng.uniform(0.1, 0.9))])
    basis = [[int(x) for x in row] for row in auditor.basis]
    assert auditor.rank > 10
    for density in (0.05, 0.5, 0.95, 1.0):
        v = (rng.random(auditor.atoms) < density).astype(np.int64)
        expected = [int(x) for x in v]
        for row, pivot in zip(basis, auditor.pivots):
            if v[pivot]:
                expected = [(e - r) % P for e, r in zip(expected, row)]
        assert auditor.reduce(v).tolist() == expected, density
    assert auditor.colsum.tolist() == [sum(col) % P for col in zip(*basis)]
