"""Coordinator side of federated learning (issue 9): the supervised Flower SuperLink
(:mod:`.superlink`), the ServerApp and its strategies (:mod:`.serverapp`, :mod:`.strategies`), the
app bundle (:mod:`.bundle`), ``radfed train`` (:mod:`.runner`, :mod:`.cli`), trained models in the
store (:mod:`.store`) and the frozen text encoder (:mod:`.text`).  See docs/federated-learning.md."""
