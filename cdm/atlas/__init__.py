"""OHDSI ATLAS cohort definitions (Circe JSON) as radfed cohorts.

A Circe cohort expression is translated (:mod:`cdm.atlas.translate`) into an :class:`AtlasCohort`
(:mod:`cdm.atlas.model`): the same logic in radfed's own terms, concept sets named by vocabulary
and code instead of concept ids, so each node resolves them through its own vocabulary
(:mod:`cdm.atlas.concepts`).  A spec whose ``cohort`` is an ``AtlasCohort`` runs like any other;
the node compiles it with :mod:`cdm.atlas.cohort` (primary events -> qualified events -> inclusion
rules -> end dates -> eras, as Circe defines them).  What cannot be translated exactly is refused
before anything is sent (:mod:`cdm.atlas.refusals`), never approximated.

This package's ``__init__`` imports nothing: :mod:`cdm.spec` imports the model from here.
"""
