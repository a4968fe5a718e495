"""Federated learning (issue 9): what both sides of a Flower run share.

:mod:`.modelspec` is the declarative model spec (cohort + feature variables from the query language,
a target, a model type, a training schedule); :mod:`.models` holds the numpy/torch model code the
ClientApp trains and the ServerApp aggregates; :mod:`.zeroshot` the contrastive objective and the
ranking metrics of the zero-shot rare-disease matcher.  ``node/`` and ``coordinator/`` both import
from here, never from each other (docs/federated-learning.md).
"""
