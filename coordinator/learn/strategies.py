"""Flower strategies for radfed runs: FedAvg, FedProx and federated Newton, each timing its rounds.

``FedNewton`` (GLORE, Wu et al., JAMIA 2012;19:758): sites reply with their mean gradient and mean
Hessian of the logistic loss at the broadcast coefficients; FedAvg's row-weighted average of those two
arrays is the pooled gradient and Hessian, and the server's Newton step on them is exactly the pooled
Newton step — so after a handful of rounds the coefficients equal the pooled MLE to rounding.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg, FedProx

from cdm.learn.models import newton_step
from cdm.learn.modelspec import ModelSpec


def _timed(base):
    """``base`` recording wall-clock seconds per round (configure_train to the end of aggregate_train),
    and refusing to aggregate a round that fewer than ``min_train_nodes`` (``federation.min_sites``)
    sites answered without error.

    Flower's FedAvg uses ``min_train_nodes`` only to sample nodes and aggregates whatever valid
    replies come back, so a site's refusal would silently leave a model fitted on the others.  Here
    such a round aggregates nothing (the global model stays as it was, the round has no training
    metrics), and the ServerApp fails the run (:func:`coordinator.learn.serverapp.run`)."""

    class Timed(base):
        round_seconds: list
        short_rounds: list

        def configure_train(self, server_round, arrays, config, grid):
            self._t0 = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            answered = sum(1 for msg in replies if not msg.has_error())
            if answered < self.min_train_nodes:
                self.short_rounds = [*getattr(self, "short_rounds", []), (server_round, answered)]
                out = (None, None)
            else:
                out = super().aggregate_train(server_round, replies)
            self.round_seconds = [*getattr(self, "round_seconds", []), time.perf_counter() - self._t0]
            return out

    Timed.__name__ = Timed.__qualname__ = f"Timed{base.__name__}"
    return Timed


TimedFedAvg = _timed(FedAvg)
TimedFedProx = _timed(FedProx)


class FedNewton(TimedFedAvg):
    """Average [gradient, Hessian] by rows, then take the Newton step on the global coefficients."""

    def configure_train(self, server_round, arrays, config, grid):
        self._coefficients = arrays.to_numpy_ndarrays()[0]
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        stats, metrics = super().aggregate_train(server_round, replies)
        if stats is None:
            return None, metrics
        grad, hess = stats.to_numpy_ndarrays()
        try:
            step = newton_step(self._coefficients, grad, hess)
        except np.linalg.LinAlgError:
            raise RuntimeError("the pooled Hessian is singular (a constant or collinear feature?): "
                               "set training.l2 > 0") from None
        return ArrayRecord([step]), metrics


def strategy_for(model: ModelSpec):
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=model.federation.min_sites,
                  min_available_nodes=model.federation.min_sites)
    kind = model.training.strategy
    if kind == "newton":
        return FedNewton(**common)
    if kind == "fedprox":
        return TimedFedProx(proximal_mu=model.training.proximal_mu, **common)
    return TimedFedAvg(**common)
