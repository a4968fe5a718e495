"""Habitat-genomics association from spatially mapped biopsies: weighted logistic regression.

Each biopsy's outcome (its specimen carries the variant) is regressed on its labelled habitat
(intercept = ``habitats[0]``, one indicator per other habitat), weighted by the probability that
the biopsy really lies in that habitat given the registration error,
``P = Phi(d / sigma)`` (:func:`cdm.rounds.habitat_weight`; a locally planar border at signed distance
``d`` mm and isotropic Gaussian error ``sigma`` mm).  A biopsy near a border counts for little.
The node answers ``habitat_round`` rounds (weighted ``glm_binomial``); the coordinator runs the same
Newton-Raphson as :mod:`coordinator.stats.glm`, so the fit equals statsmodels
``GLM(Binomial(), freq_weights=P)`` on the pooled biopsies.
"""

from __future__ import annotations

from coordinator.stats.glm import fit_logistic
from coordinator.stats.session import Session


def run(analysis, session: Session) -> dict:
    habitats = list(analysis.habitats)
    names = ["intercept"] + [f"habitat[{h}]" for h in habitats[1:]]
    base = {"type": "habitat_round", "gene": analysis.gene, "variant_type": analysis.variant_type,
            "habitats": habitats}
    base = {k: v for k, v in base.items() if v is not None}
    out = fit_logistic(session, lambda beta: {**base, "beta": [float(b) for b in beta]}, names,
                       analysis.max_iter, analysis.tol, "habitat_round")
    return {"type": "habitat", "gene": analysis.gene, "variant_type": analysis.variant_type,
            "reference_habitat": habitats[0], **out}
