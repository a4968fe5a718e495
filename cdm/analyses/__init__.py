"""Every analysis kind radfed runs, one module each, registered here once.

A kind's module holds its whole definition side by side (vantage6's ``partial`` / ``central``):
its spec model(s) (declared in :mod:`cdm.spec`, where the spec language is), the site half a node
runs inside its disclosure policy, the central half the coordinator runs (``pool`` for one round,
``run`` for several), and what its releases mean for disclosure (``person_cells``, ``own_frame``,
``releases_model``; see :class:`cdm.analyses.kind.Kind`).  The node calls only site halves and the
coordinator only central halves; heavy libraries (scipy) load only inside the central functions.

=============  ======================  ==========================================================
kind           a site answers          central half
=============  ======================  ==========================================================
count          count                   exact sum (:mod:`.count`)
crosstab       crosstab                exact sums per cell, chi-square (:mod:`.crosstab`)
summary        summary                 exact moments (:mod:`.summary`)
histogram      histogram               exact sums per bin (:mod:`.histogram`)
quantile       quantile_round          bisection on counts (:mod:`.quantile`)
correlation    crossprod               covariance, Pearson correlation (:mod:`.correlation`)
km             km_round                Kaplan-Meier, log-rank (:mod:`.km`)
cox            cox_round               Newton-Raphson on pooled sums (:mod:`.cox`)
glm            glm_round               logistic Newton, linear normal equations (:mod:`.glm`)
concordance    concordance             agreement table, kappa, bands (:mod:`.concordance`)
habitat        habitat_round           weighted logistic Newton (:mod:`.habitat`)
=============  ======================  ==========================================================

Adding a kind: docs/adding-an-analysis.md.
"""

from __future__ import annotations

from cdm.analyses import concordance, correlation, count, cox, crosstab, glm, habitat, histogram, km, quantile, summary
from cdm.analyses.kind import Kind, SiteData

#: every kind, by the name a researcher asks for
KINDS: dict[str, Kind] = {k.name: k for k in (
    count.KIND, crosstab.KIND, summary.KIND, quantile.KIND, histogram.KIND, correlation.KIND,
    km.KIND, cox.KIND, glm.KIND, concordance.KIND, habitat.KIND)}

#: every kind with a site half, by the analysis type a site answers (``km_round`` -> km)
SITE_KINDS: dict[str, Kind] = {k.site_type: k for k in KINDS.values() if k.site is not None}

#: the analysis types a node answers, in the order of the default allowlist
SITE_TYPES: tuple[str, ...] = tuple(SITE_KINDS)

#: the analyses the coordinator drives over rounds (``Kind.run``)
MULTI_ROUND: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.run is not None)

__all__ = ["KINDS", "MULTI_ROUND", "SITE_KINDS", "SITE_TYPES", "Kind", "SiteData", "site_kind", "central_kind"]


def site_kind(analysis_type: str) -> Kind | None:
    """The kind whose site half answers ``analysis_type`` at a node."""
    return SITE_KINDS.get(analysis_type)


def central_kind(analysis_type: str) -> Kind | None:
    """The kind the coordinator pools or drives for a job of ``analysis_type``: a multi-round kind by
    its name, or a one-round kind whose site answers the same type; None when nothing is pooled."""
    kind = KINDS.get(analysis_type)
    return kind if kind is not None and (kind.run is not None or kind.pool is not None) else None
