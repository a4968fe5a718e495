"""What one analysis kind declares (:class:`Kind`) and what its site half is given (:class:`SiteData`).

Each module of :mod:`cdm.analyses` declares one ``KIND``: the spec model(s) a researcher and a site
see, the site half (runs at a node, inside its disclosure policy), and the central half (runs at the
coordinator: ``pool`` for a one-round analysis, ``run`` for one driven over rounds through a
:class:`cdm.analyses.session.Session`).  Both halves live side by side in the kind's module, as in
vantage6's ``partial`` / ``central``; node and coordinator each call only their own half.

The site half gets the site's disclosure policy as a duck-typed object (the node's
``node.disclosure.policy.Policy``): ``small(n)`` (zero included), ``suppress(keys, counts)`` (primary and
secondary cell suppression), ``categories(spec, analysis, site)`` (a crosstab's categories from the
spec, never from the data), ``check_columns(rows, names, what, persons=None)`` (a model column needs
``min_cell_count`` rows -- persons, when ``persons`` gives each row's -- on each side), ``min_cell_count``, ``min_rows_model``,
``rows_per_parameter`` (node/disclosure/shapes.py says why each shape is data-independent).  It raises
:class:`cdm.errors.Refusal` for what the policy forbids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cdm.errors import Refusal


@dataclass(frozen=True)
class SiteData:
    """One request's cohort at a site: person ids (person order), the decoded columns of the variables
    the analysis names (empty for a kind with ``own_frame``), the CDM engine and the site's name."""

    ids: np.ndarray
    values: dict
    engine: object = None
    site: str = "local"


@dataclass(frozen=True)
class Kind:
    """One analysis kind.

    ``model``: the spec model of what a researcher asks (``model.type`` names the kind);
    ``site_model``: what a site is asked when that differs (one round of a multi-round analysis),
    else ``model``.  ``site(spec, data, policy) -> result`` is the node half; ``pool(analysis,
    results) -> table`` or ``run(analysis, session) -> result`` the central half.  ``own_frame``:
    the site half compiles frames of its own from the CDM (survival times, intervals, biopsies)
    instead of the cohort frame's variable columns.  ``checks_data``: a ``ValueError`` of the site
    half is a check on the data, refused as ``BAD_SPEC`` (never row values in it).
    ``releases_model``: the release is model sums, not counts of persons (its own row limits apply).
    ``person_cells(a, ids, values, result) -> [(person ids, released n or None)]``: the released
    counts as person sets, for the audit of linked releases.  ``rounds``: how many rounds, in words."""

    model: type
    site: Callable | None = None
    site_model: type | None = None
    pool: Callable | None = None
    run: Callable | None = None
    own_frame: bool = False
    checks_data: bool = False
    releases_model: bool = False
    person_cells: Callable | None = None
    rounds: str = "1 round"

    @property
    def name(self) -> str:
        return self.model.model_fields["type"].default

    @property
    def site_type(self) -> str | None:
        """The analysis type a site answers for this kind (None: the coordinator only)."""
        if self.site is None:
            return None
        return (self.site_model or self.model).model_fields["type"].default


# -- checks the site halves share ------------------------------------------------------------------


def enough_rows(n: int, parameters: int, policy, what: str = "complete rows") -> None:
    need = max(policy.min_rows_model, policy.rows_per_parameter * parameters)
    if n < need:
        raise Refusal("MIN_ROWS", f"needs at least {need} {what} for {parameters} parameter(s)")


def not_small(count: int, policy, what: str) -> None:
    if policy.small(int(count)):
        raise Refusal("MIN_CELL", f"fewer than {policy.min_cell_count} {what}")


def outcome_classes(y: np.ndarray, policy, what: str) -> None:
    """Both classes of a 0/1 outcome are 0 or at least the minimum cell count."""
    positives = int((y == 1).sum())
    not_small(positives, policy, f"{what} with outcome 1")
    not_small(int(y.size) - positives, policy, f"{what} with outcome 0")


def complete_rows(values: dict, names: list[str]) -> np.ndarray:
    """The rows (persons) where every one of ``names`` has a value, as a float matrix."""
    rows = [row for row in zip(*(values[n] for n in names)) if all(v is not None for v in row)]
    return np.array(rows, dtype=float).reshape(-1, len(names))


def numeric(column, ids) -> tuple[np.ndarray, np.ndarray]:
    """(the values present in ``column`` as floats, the ids of the persons who have them)."""
    keep = np.array([v is not None for v in column], dtype=bool)
    return np.array([v for v in column if v is not None], dtype=float), ids[keep]
