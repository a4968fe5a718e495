"""Exact pooling of one-round results (count, crosstab, summary, histogram): each kind's ``pool``
in :mod:`cdm.analyses`, over ``{site: result}`` of the sites that answered ``ok`` (results as in
docs/analysis-rounds.md).  The output is the table-shaped record of :mod:`cdm.analyses.tables`, the
same for every kind, that the API returns and the CLI prints.  A cell a site suppressed is never
counted as zero: the pooled cell says it is incomplete (a lower bound) and where the suppression was.
"""

from __future__ import annotations

from cdm.analyses import KINDS
from cdm.analyses.tables import AggregationError

__all__ = ["AggregationError", "POOLED_TYPES", "pool"]

#: the analysis types pooled here, in one round
POOLED_TYPES = tuple(name for name, kind in KINDS.items() if kind.pool is not None)


def pool(analysis: dict, results: dict[str, dict]) -> dict | None:
    """The pooled table for a one-round analysis, or None when the type is pooled elsewhere."""
    kind = KINDS.get(analysis.get("type"))
    return kind.pool(analysis, results) if kind is not None and kind.pool is not None else None
