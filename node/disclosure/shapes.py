"""Release shapes that do not depend on the data they protect.

What a result *looks like* -- which categories it lists, which counts are hidden, which thresholds
get an answer -- must follow from the spec and the site's policy, never from which values happen to
occur (attack families 2, 3, 7 of issue 16):

* **Small means 0 .. k-1.**  A count, a cell, a quantile side of zero persons is hidden exactly like
  one of 1..k-1 persons (:meth:`node.disclosure.policy.Policy.small`), so "refused" no longer tells "someone".
* **Categories from the spec.**  A crosstab lists every combination of its variables' categories as
  the spec or the vocabulary defines them (:func:`category_domain`): sex F/M/O, a groups variable's
  labels, a categorical condition's labels, the bins of a binned variable, 0/1 of a presence
  variable.  A variable without such a domain (a raw measurement) must be binned.
* **Model columns.**  A covariate, outcome or weight column of a model round on which all but
  fewer than k persons share one value (a rare 0/1 code, a value only one person has) is refused
  (:func:`check_columns`): its sums and cross-products would be those few persons' values.  In
  federated training such a feature is suppressed at the site instead (:func:`suppress_rare_columns`),
  so a rare phenotype among hundreds does not stop a run.
"""

from __future__ import annotations

import numpy as np

from cdm.errors import Refusal

MAX_CELLS = 20_000  # crosstab cells (the product of the variables' categories) a site computes
SEX_CATEGORIES = ("F", "M", "O")  # cdm.compiler decodes gender_concept_id to these, nothing else
PRESENCE = (0.0, 1.0)


def bin_labels(edges) -> list[str]:
    return ["below", *(f"[{edges[i]}, {edges[i + 1]})" for i in range(len(edges) - 1)), "above"]


def category_domain(name: str, variable, edges=None, site: str = "local") -> list:
    """Every category ``variable`` can take here, from the spec alone (never from the data)."""
    if edges:
        return bin_labels(edges)
    kind = variable.kind
    if kind == "sex":
        return list(SEX_CATEGORIES)
    if kind == "site":
        return [site]
    if kind == "groups":
        return list(variable.group_labels)
    if kind == "condition" and variable.categorical:
        return list(dict.fromkeys(variable.codes))
    if kind in ("condition", "episode") or (kind == "variant" and variable.field == "presence"):
        return list(PRESENCE)
    raise Refusal("NOT_ALLOWED", f"crosstab by {name!r}: a {kind} value has no categories fixed by the spec; "
                                 f"give it bins (bins: {{{name}: [...]}}) or use a groups variable")


def crosstab_domain(spec, a, site: str = "local") -> list[list]:
    """The categories of each ``by`` variable; refuses a table larger than :data:`MAX_CELLS`."""
    domains = [category_domain(n, spec.variables[n], a.bins.get(n), site) for n in a.by]
    cells = int(np.prod([len(d) for d in domains]))
    if cells > MAX_CELLS:
        raise Refusal("NOT_ALLOWED", f"crosstab of {cells} cells; at most {MAX_CELLS} are computed")
    return domains


def rare_columns(rows: np.ndarray, min_cell: int, persons: np.ndarray | None = None) -> list[int]:
    """The columns of ``rows`` on which a value shared by several rows leaves fewer than ``min_cell``
    persons on the other side: a 0/1 column (a level of a categorical covariate) needs ``min_cell``
    on each side, a mostly-zero one ``min_cell`` with a non-zero value; a constant column counts as
    none on one side (zero and small look the same).  A column of distinct values (age, a
    measurement) has no such side.  ``persons``: the person of each row, where a person has several
    rows (biopsies, time-varying intervals) -- six biopsies of one patient are one person, not six."""
    rare = []
    for j in range(rows.shape[1] if rows.ndim == 2 else 0):
        column = rows[:, j]
        if column.size == 0:
            continue
        values, counts = np.unique(column, return_counts=True)
        if counts.max() <= 1:
            continue
        other = column != values[counts.argmax()]
        n_other = int(other.sum()) if persons is None else int(np.unique(persons[other]).size)
        if n_other < min_cell:
            rare.append(j)
    return rare


def check_columns(rows: np.ndarray, names: list[str], min_cell: int, what: str = "rows",
                  persons: np.ndarray | None = None) -> None:
    """Refuse ``MIN_CELL`` a model whose column is rare (:func:`rare_columns`)."""
    for j in rare_columns(rows, min_cell, persons)[:1]:
        whom = what if persons is None else f"persons ({what})"
        raise Refusal("MIN_CELL", f"{names[j]!r}: fewer than {min_cell} {whom} differ from its most common value "
                                  "(a rare or constant column would release those few persons' values)")


def suppress_rare_columns(rows: np.ndarray, min_cell: int) -> tuple[np.ndarray, list[int]]:
    """Local suppression (Hundepool et al. 2012, ch. 3) for training data: each rare column
    (:func:`rare_columns`) replaced by its most common value, so it is constant -- the same whether
    0 or 1..k-1 persons differ -- and an update's entries for it are sums over every row, never the
    few persons' own values.  (rows with those columns suppressed, their indexes)."""
    rare = rare_columns(rows, min_cell)
    if not rare:
        return rows, []
    rows = rows.copy()
    for j in rare:
        values, counts = np.unique(rows[:, j], return_counts=True)
        rows[:, j] = values[counts.argmax()]
    return rows, rare
