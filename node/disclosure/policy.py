"""Disclosure control from node.toml ``[policy]``: small cells, secondary suppression, model limits.

Cells with ``n < min_cell_count``, zero included, are suppressed (released as ``null``: a zero reads
like a small count).  Secondary suppression: every *line* of a table (the whole table, and for 2+
dimensions every row/column slice whose total can be learnt from a lower-dimensional query) must have
either no suppressed cell of 1..min-1 persons or suppressed cells that are >= 2 in number and sum to
at least ``min_cell_count``; otherwise the smallest released cell of
the line is suppressed too, repeated until stable — so no suppressed cell is recoverable from margins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from cdm.analyses import SITE_TYPES
from cdm.errors import Refusal
from cdm.spec import ANALYSIS_TYPES, analysis_variables
from cdm.suppression import suppress_cells as cdm_suppress_cells
from node.config import ConfigError

__all__ = ["LIMITS", "Policy", "Refusal", "recoverable_cells", "suppress_cells"]


@dataclass
class Policy:
    min_cell_count: int = 5
    min_rows_model: int = 20
    rows_per_parameter: int = 10
    differencing_k: int = 5
    max_requests_per_hour: int = 1000
    allowed_analyses: tuple = SITE_TYPES  # every analysis a site answers (cdm.analyses)
    # "none", "all", or the analysis types a site administrator approves by hand (node/disclosure/approvals.py)
    approval: str | tuple = "none"
    # audit each release against everything released to the same requester (recoverable_cells)
    audit_linked_releases: bool = True
    # per analysis type, the site's parameter limits (see LIMITS); from allowed_analyses entries
    limits: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "Policy":
        raw = config.section("policy") if config is not None else {}
        p = cls()
        for name in ("min_cell_count", "min_rows_model", "rows_per_parameter", "differencing_k",
                     "max_requests_per_hour"):
            if name in raw:
                setattr(p, name, int(raw[name]))
        if "allowed_analyses" in raw:
            p.allowed_analyses, p.limits = _allowlist(raw["allowed_analyses"])
        if "approval" in raw:
            p.approval = _approval_mode(raw["approval"])
        if "audit_linked_releases" in raw:
            if not isinstance(raw["audit_linked_releases"], bool):
                raise ConfigError(f"[policy] audit_linked_releases must be true or false, not {raw['audit_linked_releases']!r}")
            p.audit_linked_releases = raw["audit_linked_releases"]
        return p

    def check_limits(self, spec) -> None:
        """Refuse ``NOT_ALLOWED`` when ``spec``'s analysis exceeds a limit the site set for its type."""
        a = spec.analysis
        for name, limit in self.limits.get(a.type, {}).items():
            problem = LIMITS[name][1](a, limit)
            if problem:
                raise Refusal("NOT_ALLOWED", f"{a.type}: {problem} (this site's limit {name} = {limit!r})")

    def needs_approval(self, analysis_type: str) -> bool:
        return self.approval == "all" or (isinstance(self.approval, tuple) and analysis_type in self.approval)

    def categories(self, spec, a, site: str = "local") -> list[list]:
        """A crosstab's categories per variable, from the spec (node/disclosure/shapes.py)."""
        from node.disclosure.shapes import crosstab_domain

        return crosstab_domain(spec, a, site)

    def check_columns(self, rows, names: list[str], what: str = "rows", persons=None) -> None:
        """Refuse a model column with fewer than min_cell_count persons on a side (shapes.py);
        ``persons``: each row's person, where a person has several rows."""
        from node.disclosure.shapes import check_columns

        check_columns(rows, names, self.min_cell_count, what, persons)

    def small(self, n: int) -> bool:
        """Below the minimum cell size, zero included: a zero is hidden like a small count, so a
        refusal or a hidden cell never tells "someone is there" (node/disclosure/shapes.py)."""
        return n < self.min_cell_count

    def suppress(self, keys: list[tuple], counts: list[int]) -> set[int]:
        """The cells of a table to hide (:func:`suppress_cells`): what an analysis's site half calls."""
        return suppress_cells(keys, counts, self)


def _bins(a) -> int:
    """The most bins any variable of the analysis is cut into (histogram edges, crosstab bins)."""
    edges = [getattr(a, "edges", None) or []] + list((getattr(a, "bins", None) or {}).values())
    return max((len(e) - 1 for e in edges if e), default=0)


def _over(what: str, value: int, limit: int) -> str | None:
    return f"{value} {what}, more than {limit}" if value > limit else None


#: Parameter limits a site may attach to an analysis in ``allowed_analyses``, with how each is
#: checked.  A small site limits what can be cut finely: many bins or thresholds put few persons in
#: each released number; many covariates bring a model close to its rows.
LIMITS = {
    "max_variables": (int, lambda a, n: _over("variables", len(list(analysis_variables(a))), n)),
    "max_bins": (int, lambda a, n: _over("bins", _bins(a), n)),
    "max_thresholds": (int, lambda a, n: _over("thresholds", len(getattr(a, "thresholds", None) or []), n)),
    "min_bin_days": (int, lambda a, n: f"bins of {a.bin_days} days, finer than {n}"
                     if getattr(a, "bin_days", None) is not None and a.bin_days < n else None),
    "modes": (list, lambda a, modes: f"mode {a.mode!r} is not one of {modes}"
              if getattr(a, "mode", None) is not None and a.mode not in modes else None),
}


def _allowlist(value) -> tuple[tuple, dict]:
    """``[policy] allowed_analyses``: analysis types, each a string or an inline table with its
    parameter limits, e.g. ``["count", {type = "crosstab", max_variables = 2, max_bins = 10}]``.
    Anything it cannot read is a configuration error (a typo must not lift a limit)."""
    if not isinstance(value, list):
        raise ConfigError("[policy] allowed_analyses must be a list")
    types, limits = [], {}
    for entry in value:
        if isinstance(entry, str):
            entry = {"type": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"[policy] allowed_analyses: {entry!r} is neither an analysis type nor a table with type")
        kind = entry["type"]
        if kind not in ANALYSIS_TYPES:
            raise ConfigError(f"[policy] allowed_analyses: unknown analysis type {kind!r}; known: {', '.join(ANALYSIS_TYPES)}")
        own = {}
        for key, limit in entry.items():
            if key == "type":
                continue
            if key not in LIMITS:
                raise ConfigError(f"[policy] allowed_analyses: {kind}: unknown limit {key!r}; known: {', '.join(LIMITS)}")
            expected = LIMITS[key][0]
            if not isinstance(limit, expected) or isinstance(limit, bool) or (expected is int and limit < 0):
                raise ConfigError(f"[policy] allowed_analyses: {kind}: {key} must be "
                                  f"{'a non-negative integer' if expected is int else 'a list'}, not {limit!r}")
            own[key] = limit
        types.append(kind)
        if own:
            limits[kind] = own
    return tuple(dict.fromkeys(types)), limits


def _approval_mode(value) -> str | tuple:
    """``[policy] approval``: "none" | "all" | a list of analysis types (a typo must not silently
    let an analysis through unapproved, so unknown types are an error)."""
    if value in ("none", "all"):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        unknown = sorted(set(value) - set(ANALYSIS_TYPES))
        if unknown:
            raise ConfigError(f"[policy] approval: unknown analysis type(s) {unknown}; known: {', '.join(ANALYSIS_TYPES)}")
        return tuple(value)
    raise ConfigError(f'[policy] approval must be "none", "all" or a list of analysis types, not {value!r}')


def suppress_cells(keys: list[tuple], counts: list[int], policy: Policy) -> set[int]:
    """Indexes of cells to suppress (primary and secondary; :func:`cdm.suppression.suppress_cells`)."""
    return cdm_suppress_cells(keys, counts, policy.min_cell_count)


# atoms x released cells above which the audit refuses instead of solving (about 1 s of QR on one
# core; benchmarks/README.md)
MAX_AUDIT_ENTRIES = 5_000_000


def recoverable_cells(released: list[np.ndarray], hidden: list[np.ndarray], min_cell_count: int) -> list[int]:
    """Indexes of the ``hidden`` person sets (suppressed cells, 0 < size < min_cell_count) whose size
    follows exactly from the sizes of the ``released`` person sets — an audit of linked tables.

    Secondary suppression protects each table against its own margins, but not tables linked through
    other queries (sub-cohorts, other cross-classifications: Hundepool et al., *Statistical
    Disclosure Control*, 2012, sec. 4.5).  Every released count is the size of a set of persons, so
    over the *atoms* of all the sets (persons grouped by which sets contain them) each release is
    one linear equation in the unknown atom sizes, and a suppressed cell is disclosed exactly when
    its indicator lies in the row space of the released ones (the audit of Chin & Ozsoyoglu, 1982,
    "Auditing and inference control in statistical databases", IEEE TSE 8(6)).  Non-negativity can
    pin a cell too in principle; in the attacks of tests/test_policy_attacks.py every exact recovery
    by linear programming was a row-space one.  Conservative: the attacker is credited with knowing
    which atoms are empty.
    """
    small = [i for i, h in enumerate(hidden) if 0 < len(h) < min_cell_count]
    if not small or not released:
        return []
    released = list({np.unique(s).tobytes(): np.unique(s) for s in released}.values())  # repeats add nothing
    sets = released + [np.unique(hidden[i]) for i in small]
    persons = np.unique(np.concatenate(sets))
    member = np.zeros((len(persons), len(sets)), dtype=bool)
    for j, s in enumerate(sets):
        member[np.searchsorted(persons, s), j] = True
    atoms = np.unique(np.packbits(member, axis=1), axis=0)  # one row per distinct membership pattern
    if len(atoms) * len(released) > MAX_AUDIT_ENTRIES:  # fail closed rather than stall the node
        raise Refusal("DIFFERENCING", f"this result cannot be audited against the {len(released)} cells already "
                                      "released to you in reasonable time; ask the site administrator")
    atoms = np.unpackbits(atoms, axis=1, count=len(sets)).astype(float)
    A, H = atoms[:, :len(released)], atoms[:, len(released):]  # atoms x sets
    coef = scipy.linalg.lstsq(A, H, lapack_driver="gelsy")[0]  # QR with pivoting: rank-revealing, cheaper than SVD
    residual = np.linalg.norm(A @ coef - H, axis=0)
    return [small[k] for k in range(len(small)) if residual[k] < 1e-7 * max(1.0, float(np.linalg.norm(H[:, k])))]
