"""Exact pooled quantiles by federated bisection on counts.

Sites only ever release counts ``n_le(t) = #{x <= t}`` at thresholds the coordinator picks
(``quantile_round``).  The k-th order statistic of the pooled data is the smallest ``v`` with
``n_le(v) >= k``.  The search runs over the 2^64 doubles in their *order-preserving integer* encoding,
so each bracket ``(lo, hi]`` (``n_le(lo) < k <= n_le(hi)``) shrinks by a factor of
(thresholds per target + 1) per round, and when ``hi`` is the double right after ``lo`` the order
statistic is exactly ``hi``: the pooled data's value to its full resolution, with no assumption on
its range.  Each round also probes the shortest decimals inside each bracket with the double just
below each: recorded data (whole days, ages, rounded lab values) usually end there in 3-5 rounds.  A quantile uses numpy's default definition (Hyndman & Fan 1996 type 7):
``x_(j) + g (x_(j+1) - x_(j))`` with ``h = (n - 1) p``, ``j = floor(h)``, ``g = h - j``, i.e. two
order statistics, searched simultaneously.

A count a site suppressed (``null``) is bounded instead: by the tail it lies in (a site never
releases a count with fewer than its minimum cell on either side, nor an extreme, and says which tail
a hidden one is in: ``bounds``) and by the counts it released at neighbouring thresholds.  If the
brackets have not closed within ``max_rounds``, or a round narrowed nothing because every useful
count was suppressed (a small site near the quantile), the result says so and gives the bracket.

The thresholds are algorithm-locked: every round carries the pooled counts of the rounds before it
(:meth:`Bisection.lock`) and a node replays :class:`Bisection` and refuses thresholds it would not
have asked (:func:`expected_thresholds`; node/secure.py, ``ROUND_LOCKED``).

Site half (``quantile_round``): the counts at the thresholds asked, a count hidden when either side of
its threshold is small.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from cdm import spec as S
from cdm.analyses.kind import Kind, numeric
from cdm.analyses.session import Session, StatsError, need
from cdm.errors import Refusal

MAX_THRESHOLDS = 200  # cdm.spec.QuantileRound.thresholds
SIGN = 1 << 63


def ordered_key(x: float) -> int:
    """Order-preserving map of a double to an integer (-0.0 and 0.0 share 0)."""
    bits = struct.unpack("<q", struct.pack("<d", float(x)))[0]
    return bits if bits >= 0 else -(bits & (SIGN - 1))


def key_value(key: int) -> float:
    bits = key if key >= 0 else (-key) | SIGN
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


LOWEST, HIGHEST = ordered_key(-math.inf), ordered_key(math.inf)


def order_statistics(n: int, probs: list[float]) -> list[tuple[float, int, int, float]]:
    """Per prob: (prob, j, j + 1, g) with 1-based order statistics j, j + 1 and weight g (type 7)."""
    out = []
    for p in probs:
        h = (n - 1) * p
        j = math.floor(h)
        out.append((p, j + 1, min(j + 2, n), h - j))
    return out


def short_decimals(low: float, high: float, limit: int) -> list[float]:
    """Up to ``limit`` numbers in ``(low, high]`` with the fewest significant decimal digits.

    Recorded data are usually short decimals (whole days, ages, 3-digit lab values); probing such a
    value ``v`` together with the double just below it closes a bracket at once when the order
    statistic is ``v``.  ``float(f"{i}e{e}")`` is the correctly rounded double of that decimal, so it
    equals the value the data was parsed to.
    """
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return []
    if low < 0 <= high:
        return [0.0]
    scale = max(abs(low), abs(high))
    top = math.floor(math.log10(scale)) if scale > 0 else 0
    for digits in range(1, 18):
        exponent = top - digits + 1
        first, last = math.floor(low / 10.0 ** exponent) + 1, math.floor(high / 10.0 ** exponent)
        if last >= first:
            values = [float(f"{i}e{exponent}") for i in range(first, min(last, first + limit - 1) + 1)]
            return [v for v in values if low < v <= high]
    return []


def _thresholds(brackets: dict[int, list[int]], budget: int) -> list[int]:
    """Half the budget evenly over each open bracket (in key space), half on short decimals in it
    and the doubles just below them."""
    open_ = {tuple(b) for b in brackets.values() if b[1] - b[0] > 1}
    if not open_:
        return []
    per = max(2, budget // len(open_))
    keys = set()
    for lo, hi in open_:
        m = min(per // 2, hi - lo - 1)
        keys.update(lo + (hi - lo) * i // (m + 1) for i in range(1, m + 1))
        for value in short_decimals(key_value(lo), key_value(hi), max(1, per // 4)):
            keys.update((ordered_key(value) - 1, ordered_key(value)))
    return sorted(k for k in keys if LOWEST < k < HIGHEST)[:MAX_THRESHOLDS]


def _site_bounds(r: dict, site: str, m: int) -> tuple[int, list[int], list[int]]:
    """(n, lower, upper) bounds of one site's n_le at the m thresholds (ascending): a released count
    is exact; a hidden one is bounded by the site's ``bounds`` (a tail: fewer than its minimum cell
    on one side) and by the counts released at its neighbours (n_le never decreases)."""
    n = int(need(r, "n", site, "quantile_round"))
    counts = need(r, "n_le", site, "quantile_round")
    if len(counts) != m:
        raise StatsError(f"{site}: quantile_round gave {len(counts)} counts for {m} thresholds")
    given = r.get("bounds") or [None] * m
    lower = [int(c) if c is not None else int(b[0]) if b else 0 for c, b in zip(counts, given)]
    upper = [int(c) if c is not None else int(b[1]) if b else n for c, b in zip(counts, given)]
    for i in range(1, m):
        lower[i] = max(lower[i], lower[i - 1])
    for i in range(m - 2, -1, -1):
        upper[i] = min(upper[i], upper[i + 1])
    return n, lower, upper


def _pooled_counts(results: dict[str, dict], m: int) -> tuple[int, list[int], list[int]]:
    """(pooled n, lower and upper bounds of the pooled n_le per threshold): equal where every site
    released its count."""
    n, lower, upper = 0, [0] * m, [0] * m
    for site, r in results.items():
        n_site, lo, hi = _site_bounds(r, site, m)
        n += n_site
        lower = [a + b for a, b in zip(lower, lo)]
        upper = [a + b for a, b in zip(upper, hi)]
    return n, lower, upper


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


#: what a quantile round's ``lock`` says it is (:meth:`Bisection.lock`, :func:`expected_thresholds`)
LOCK = "radfed-bisection/1"


class Bisection:
    """The bisection as a replayable state machine (as :class:`cdm.newton.Newton` is for model rounds):
    the coordinator drives it, and a node replays it from the pooled counts a round carries to check
    the thresholds it is asked about (algorithm-locked rounds).  Nothing but the probabilities asked
    for and the pooled counts of the earlier rounds enters the thresholds: the first round's do not
    even depend on those (one bracket over every double)."""

    def __init__(self, probs):
        self.probs = [float(p) for p in probs]
        self.n: int | None = None
        self.brackets: dict[int, list[int]] = {0: [LOWEST, HIGHEST]}  # before n is known: one for all
        self.stalled = False

    def propose(self) -> list[int]:
        """The next round's thresholds as ordered keys ([] when the brackets are closed or stalled)."""
        return [] if self.stalled else _thresholds(self.brackets, MAX_THRESHOLDS)

    def observe(self, keys: list[int], n: int, lower: list[int], upper: list[int]) -> None:
        """Narrow the brackets with one round's pooled counts (lower and upper bounds of ``n_le`` at
        ``keys``: equal where nothing was suppressed)."""
        if self.n is None:
            if n == 0:
                raise StatsError("no values of the variable at any site")
            self.n = n
            start = self.brackets.pop(0)
            self.brackets = {k: list(start) for stat in order_statistics(n, self.probs) for k in stat[1:3]}
        elif n != self.n:
            raise StatsError(f"the number of values changed between rounds ({self.n} -> {n}): data changed mid-analysis")
        before = {k: tuple(b) for k, b in self.brackets.items()}
        for k, bracket in self.brackets.items():
            for key, low, high in zip(keys, lower, upper):
                if not bracket[0] < key < bracket[1]:
                    continue
                if low >= k:  # at least k values <= key, whatever the hidden counts are
                    bracket[1] = min(bracket[1], key)
                elif high < k:
                    bracket[0] = max(bracket[0], key)
        if len(before) == len(self.brackets) and all(tuple(self.brackets[k]) == before.get(k) for k in self.brackets):
            self.stalled = True  # every useful count was suppressed: asking again would release nothing new

    def lock(self, counts: list[dict]) -> dict:
        """What a round carries so that a node can recompute its thresholds (:func:`expected_thresholds`):
        the probabilities and the pooled counts (``n``, ``lower``, ``upper``) of every earlier round."""
        return {"algorithm": LOCK, "probs": list(self.probs), "rounds": [dict(r) for r in counts]}


def expected_thresholds(lock: dict | None) -> list[float] | None:
    """The thresholds the bisection asks next after the pooled counts in ``lock`` (the first round's
    without one); None when those counts end it.  Raises ValueError on a malformed lock."""
    lock = lock or {}
    if lock and lock.get("algorithm") != LOCK:
        raise ValueError(f"unknown round lock {lock.get('algorithm')!r} (expected {LOCK})")
    probs, counts = lock.get("probs") or [], lock.get("rounds") or []
    if not isinstance(probs, list) or not all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in probs) \
            or not isinstance(counts, list):
        raise ValueError("lock: probs must be a list of probabilities and rounds a list")
    if counts and not probs:
        raise ValueError("lock: rounds after the first need the probabilities they bracket")
    machine = Bisection(probs)
    try:
        for r in counts:
            keys = machine.propose()
            if not keys:
                return None
            n, lower, upper = int(r["n"]), [int(v) for v in r["lower"]], [int(v) for v in r["upper"]]
            if len(lower) != len(keys) or len(upper) != len(keys):
                raise ValueError("lock: a round's counts do not match its thresholds")
            machine.observe(keys, n, lower, upper)
    except StatsError as exc:
        raise ValueError(f"lock: {exc}") from None
    keys = machine.propose()
    return [key_value(k) for k in keys] or None


def same_thresholds(asked, expected: list[float]) -> bool:
    """Equal as doubles (JSON carries every double exactly)."""
    return len(asked) == len(expected) and all(ordered_key(a) == ordered_key(e) for a, e in zip(asked, expected))


def run(analysis, session: Session) -> dict:
    variable, probs = analysis.variable, list(analysis.probs)
    machine, counts = Bisection(probs), []
    while session.rounds < analysis.max_rounds:
        keys = machine.propose()
        if not keys:
            break
        thresholds = [key_value(k) for k in keys]
        results = session.round({"type": "quantile_round", "variable": variable, "thresholds": thresholds},
                                lock=machine.lock(counts))
        round_n, lower, upper = _pooled_counts(results, len(keys))
        counts.append({"n": round_n, "lower": lower, "upper": upper})
        if machine.n is None and round_n == 0:
            raise StatsError(f"no values of {variable!r} at any site")
        machine.observe(keys, round_n, lower, upper)
    n, brackets, stalled = machine.n, machine.brackets, machine.stalled
    if n is None:
        raise StatsError("max_rounds reached before any count was released")
    rows = []
    for p, j, j1, g in order_statistics(n, probs):
        exact = all(brackets[k][1] - brackets[k][0] == 1 for k in (j, j1))
        low, high = key_value(brackets[j][1]), key_value(brackets[j1][1])
        row = {"prob": p, "order_statistics": [j, j1], "exact": exact}
        if exact:
            row["value"] = float(np.quantile(np.array([low, high]), g)) if j1 != j else low  # numpy's lerp
        else:
            row.update(value=None, lower_bound=_finite(key_value(brackets[j][0])), upper_bound=_finite(high),
                       note=("the sites suppressed the counts needed to narrow the bracket further" if stalled
                             else "max_rounds reached before the bracket closed"))
        rows.append(row)
    return {"type": "quantile", "variable": variable, "sites": list(session.sites or []), "n": n,
            "quantiles": rows, "rounds": session.rounds, "max_rounds": analysis.max_rounds}


# -- site half -------------------------------------------------------------------------------------


def site(spec: S.Spec, data, policy) -> dict:
    """``quantile_round``: n and ``n_le(t)`` per threshold; a count is hidden when either side of its
    threshold is small."""
    a = spec.analysis
    x = np.array([v for v in data.values[a.variable] if v is not None], dtype=float)
    if policy.small(len(x)):
        raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} values")
    n_le = [int((x <= t).sum()) for t in a.thresholds]
    hidden = [i for i, k in enumerate(n_le) if policy.small(k) or policy.small(len(x) - k)]
    # a hidden count says only which tail it is in: fewer than the minimum at or below t, or above t
    k_1, n = policy.min_cell_count - 1, int(len(x))
    bounds = [None if i not in hidden else [0, k_1] if policy.small(k) else [n - k_1, n] for i, k in enumerate(n_le)]
    return {"n": n, "n_le": [None if i in hidden else k for i, k in enumerate(n_le)], "suppressed": hidden,
            "bounds": bounds}


def person_cells(a, ids, values, result) -> list:
    x, keep = numeric(values[a.variable], ids)
    cells = [(keep, result["n"])] + [(keep[x <= t], n) for t, n in zip(a.thresholds, result["n_le"])]
    # an n_le is hidden when either side of t is small: guard the persons above t as well
    return cells + [(keep[x > t], None) for t, n in zip(a.thresholds, result["n_le"]) if n is None]


KIND = Kind(model=S.QuantileAnalysis, site_model=S.QuantileRound, site=site, run=run, person_cells=person_cells,
            rounds="bisection on counts: 4-14 rounds (at most max_rounds)")
