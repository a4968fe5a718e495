"""Habitat-genomics association from spatially mapped biopsies: weighted logistic regression.

Each biopsy's outcome (its specimen carries the variant) is regressed on its labelled habitat
(intercept = ``habitats[0]``, one indicator per other habitat), weighted by the probability that
the biopsy really lies in that habitat given the registration error,
``P = Phi(d / sigma)`` (:func:`cdm.rounds.habitat_weight`; a locally planar border at signed distance
``d`` mm and isotropic Gaussian error ``sigma`` mm).  A biopsy near a border counts for little.
The node answers ``habitat_round`` rounds (weighted ``glm_binomial``); the coordinator runs the same
Newton-Raphson as :mod:`cdm.analyses.glm`, so the fit equals statsmodels
``GLM(Binomial(), freq_weights=P)`` on the pooled biopsies.

Site half (``habitat_round``): the biopsy frame (:func:`cdm.round_frames.biopsy_frame`); MIN_ROWS
over biopsies; an outcome class or a habitat of 1..min-1 biopsies, or of biopsies of 1..min-1
persons, -> MIN_CELL.
"""

from __future__ import annotations

import numpy as np

from cdm import rounds
from cdm import spec as S
from cdm.analyses.glm import fit_logistic
from cdm.analyses.kind import Kind, enough_rows, outcome_classes
from cdm.analyses.session import Session


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


# -- site half -------------------------------------------------------------------------------------


def site(spec: S.Spec, data, policy) -> dict:
    """``habitat_round``: this site's weighted logistic sums at ``beta`` over its located biopsies."""
    from cdm.round_frames import biopsy_frame  # the node's half only: the coordinator never compiles SQL

    a = spec.analysis
    biopsies = biopsy_frame(spec, data.engine, a.gene, a.variant_type)
    labelled = np.array([h in a.habitats for h in biopsies.habitat], dtype=bool)
    located = ~np.isnan(biopsies.distance_mm)
    keep = labelled & located
    n, p = int(keep.sum()), len(a.habitats)
    enough_rows(n, p, policy, "located biopsies with a specimen")
    y = biopsies.outcome[keep].astype(float)
    outcome_classes(y, policy, "biopsies")
    labels = [h for h, k in zip(biopsies.habitat, keep) if k]
    X = np.column_stack([np.ones(n)] + [[1.0 if h == name else 0.0 for h in labels] for name in a.habitats[1:]])
    # a person has several biopsies: each habitat, and each outcome class, needs min_cell_count *persons*
    persons = biopsies.person_id[keep]
    policy.check_columns(np.column_stack([y, X[:, 1:]]), ["outcome", *a.habitats[1:]], "biopsies", persons)
    weights = rounds.habitat_weight(biopsies.distance_mm[keep], biopsies.error_mm[keep])
    result = rounds.glm_binomial(y, X, a.beta, weights)
    return {**result, "sum_weights": float(weights.sum()),
            "excluded": {"no_specimen": biopsies.no_specimen, "other_habitat": int((~labelled).sum()),
                         "no_distance": int((labelled & ~located).sum())}}


KIND = Kind(model=S.HabitatAnalysis, site_model=S.HabitatRound, site=site, run=run, own_frame=True, checks_data=True,
            releases_model=True, rounds="one round per Newton iteration (at most max_iter) + 1")
