"""Attack the disclosure policy: a suppressed cell must not be recoverable from margins/totals."""

from hypothesis import given, settings, strategies as st

from node.disclosure.policy import Policy, suppress_cells


def _recoverable(keys, counts, hidden, k):
    """A line with exactly one hidden cell gives it away (line total minus the shown cells)."""
    dims = len(keys[0])
    lines = [list(range(len(keys)))]
    for d in range(dims):
        groups = {}
        for i, key in enumerate(keys):
            groups.setdefault(key[:d] + key[d + 1:], []).append(i)
        lines += groups.values()
    for line in lines:
        h = [i for i in line if i in hidden]
        if 0 < sum(counts[i] for i in line) < k:
            continue  # that margin is itself suppressed wherever it is released
        if (len(h) == 1 and counts[h[0]] > 0) or 0 < sum(counts[i] for i in h) < k:
            return True
    return False


def test_one_dimension_margin_attack():
    keys, counts = [("a",), ("b",), ("c",)], [3, 10, 12]
    hidden = suppress_cells(keys, counts, Policy())
    assert 0 in hidden and len(hidden) >= 2  # total 25 minus shown cells no longer gives 3


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=4, max_size=4), st.lists(st.integers(0, 12), min_size=3, max_size=3))
def test_two_dimension_tables_have_no_recoverable_cell(row_a, row_b):
    keys = [(r, c) for r in ("x", "y") for c in range(len(row_a))][: 2 * len(row_a)]
    counts = row_a + (row_b + [7])[: len(row_a)]
    hidden = suppress_cells(keys, counts, Policy())
    assert all(i in hidden for i, n in enumerate(counts) if 0 < n < 5)
    if hidden:
        assert not _recoverable(keys, counts, hidden, 5)
