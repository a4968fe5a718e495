"""Per-rule attrition of an ATLAS cohort, as ATLAS shows it, under this node's disclosure policy.

ATLAS reports how many persons remain after each inclusion rule: persons with a qualified event
(``initial``), then those with a qualified event meeting rules 1..k, for each k in the
definition's order.  Released here as that chain, each number a count of persons that passes the
policy: a number is suppressed (``null``) when it is below ``min_cell_count`` or when it differs
from the last released number of the chain by less than ``min_cell_count`` (a zero difference
too: "no one excluded" must look like "a few excluded").  The cohort's own count (the ``count``
analysis' ``n``) closes the chain, so no released attrition number lies closer to it than the
minimum cell either.
"""

from __future__ import annotations

import numpy as np

from cdm.atlas.cohort import rule_flags
from cdm.atlas.concepts import ConceptSets
from cdm.atlas.model import AtlasCohort
from cdm.compiler import fetch_rows


def person_chain(engine, cohort: AtlasCohort) -> list[np.ndarray]:
    """Person ids remaining at each step: qualified, then after rules 1..k (k = 1..R)."""
    with engine.connect() as conn:
        sets = ConceptSets(conn, cohort, [])
        q = rule_flags(cohort, sets)
        rows = fetch_rows(conn, q)
    if not rows:
        return [np.array([], dtype=np.int64) for _ in range(len(cohort.inclusion_rules) + 1)]
    names = [c.name for c in q.selected_columns]
    person = np.array([r[names.index("person_id")] for r in rows], dtype=np.int64)
    flags = np.array([[r[names.index(f"r{i}")] for i in range(len(cohort.inclusion_rules))] for r in rows],
                     dtype=bool).reshape(len(rows), len(cohort.inclusion_rules))
    chain = [np.unique(person)]
    passing = np.ones(len(rows), dtype=bool)
    for i in range(flags.shape[1]):
        passing &= flags[:, i]
        chain.append(np.unique(person[passing]))
    return chain


def release(counts: list[int], cohort_n: int | None, min_cell: int) -> list[int | None]:
    """The chain's counts with the policy applied (see the module docstring); ``cohort_n``: the
    cohort count released alongside (``None`` when it was not released)."""
    shown: list[int | None] = []
    last = None
    for n in counts:
        ok = n >= min_cell and (last is None or last - n >= min_cell)
        shown.append(n if ok else None)
        if ok:
            last = n
    if cohort_n is not None:
        for i in range(len(shown) - 1, -1, -1):  # walk back until the chain is far enough from n
            if shown[i] is None:
                continue
            if shown[i] - cohort_n >= min_cell:
                break
            shown[i] = None
    return shown


def attrition(engine, cohort: AtlasCohort, min_cell: int, cohort_n: int | None) -> tuple[dict, list[np.ndarray]]:
    """(the released attrition, the person sets behind its released numbers: the node's
    differencing check treats each like a released cohort)."""
    chain = person_chain(engine, cohort)
    shown = release([len(c) for c in chain], cohort_n, min_cell)
    released = [persons for persons, n in zip(chain, shown) if n is not None]
    return ({"initial": shown[0],
             "rules": [{"name": rule.name, "persons": n} for rule, n in zip(cohort.inclusion_rules, shown[1:])],
             "min_cell_count": min_cell}, released)
