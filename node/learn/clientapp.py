"""The Flower ClientApp: one local training or evaluation step per message, on policy-checked rows.

The SuperNode passes the site's identity in its node config (``radfed-config`` = path of node.toml,
optional ``radfed-db`` = CDM URL; see :mod:`node.learn.supernode`).  A message is answered only in a
process whose app bundle passed the site's FAB pin (:mod:`node.learn.fabpin`).  Every message carries the model
spec (``config["model-spec"]``, JSON); the rows come from :func:`node.learn.data.training_rows`,
so the site's ``[policy]`` and ``[learning]`` tables decide what is read, and each round is audited.
What leaves the site: updated parameters (or, for ``newton``, the mean gradient and Hessian), the
row count, the mean loss; evaluation sends sums (loss, correct, rank hits), never rows.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cdm.errors import reply_of
from cdm.learn import models as M
from cdm.learn.modelspec import ModelSpec, ModelSpecError, parse_model_spec
from node.config import ConfigError
from node.learn.data import audit_round, suppress_small_groups, training_rows
from node.learn.fabpin import require_verified
from node.disclosure.policy import Refusal

log = logging.getLogger(__name__)
app = ClientApp()
_ENGINES: dict = {}


def site_context(context: Context):
    """(NodeConfig, engine) of the site this SuperNode serves."""
    from cdm.db import open_engine
    from node.config import load_config

    path = context.node_config.get("radfed-config")
    if not path:
        raise Refusal("NOT_ALLOWED", "this SuperNode was started without radfed-config (node.toml)")
    config = load_config(str(path), context.node_config.get("radfed-db") or None)
    url = config.database_url
    if url not in _ENGINES:
        _ENGINES[url] = open_engine(url)
    return config, _ENGINES[url]


def _label_indices(y: list, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row mask of patients whose label is among ``labels``, their label index)."""
    where = {label: i for i, label in enumerate(labels)}
    mask = np.array([label in where for label in y], dtype=bool)
    return mask, np.array([where[label] for label in y if label in where], dtype=np.int64)


def local_train(model: ModelSpec, arrays: list[np.ndarray], X: np.ndarray, y: list, cfg) -> tuple[list, int, float]:
    """(arrays to send, rows used, mean loss: at the received parameters for the logistic model, of
    the last local epoch for networks)."""
    t = model.training
    if model.model.type == "logistic":
        Xd, yv, w = M.design(X), np.asarray(y, dtype=float), arrays[0]
        loss, grad, hess = M.logistic_stats(w, Xd, yv, t.l2)
        if t.strategy == "newton":
            return [grad, hess], len(yv), loss
        mu = float(cfg.get("proximal-mu", 0.0)) if t.strategy == "fedprox" else 0.0
        return [M.gradient_descent(w, Xd, yv, t.learning_rate, t.local_epochs, t.l2, mu)], len(yv), loss
    mu = t.proximal_mu if t.strategy == "fedprox" else 0.0
    if model.model.type == "mlp":
        net = M.build_network(model)
        M.load_torch_arrays(net, arrays)
        yv = np.asarray(y, dtype=float)
        loss = M.train_torch(net, lambda m: M.mlp_loss(m, X, yv), t.learning_rate, t.local_epochs, mu)
        return M.torch_arrays(net), len(yv), loss
    from cdm.learn import zeroshot as Z  # torch: imported only by the runs that need it

    labels = list(cfg["labels"])
    text = M.unpack_matrix(cfg["text"])
    mask, targets = _label_indices(y, labels)
    if not mask.any():
        raise Refusal("MIN_ROWS", "no patients here carry a training label")
    enc = M.build_network(model)
    M.load_torch_arrays(enc, arrays)
    loss = M.train_torch(enc, lambda m: Z.contrastive_loss(m, X[mask], targets, text, t.temperature),
                         t.learning_rate, t.local_epochs, mu)
    return M.torch_arrays(enc), int(mask.sum()), loss


def local_evaluate(model: ModelSpec, arrays: list[np.ndarray], X: np.ndarray, y: list, cfg) -> dict:
    if model.model.type != "patient_encoder":
        return M.binary_metrics(model, arrays, X, np.asarray(y, dtype=float))
    from cdm.learn import zeroshot as Z

    labels, held = list(cfg["labels"]), set(cfg["held-out"])
    text = M.unpack_matrix(cfg["text"])
    enc = M.build_network(model)
    M.load_torch_arrays(enc, arrays)
    out = {"n": len(y)}
    unseen_labels = [label for label in labels if label in held]
    for group, wanted in (("seen", lambda label: label not in held), ("unseen", lambda label: label in held)):
        rows = np.array([wanted(label) and label in labels for label in y], dtype=bool)
        _, targets = _label_indices([label for label, keep in zip(y, rows) if keep], labels)
        for key, value in Z.hits(Z.ranks(enc, X[rows], targets, text)).items():
            out[f"{group}-{key}"] = value
    if unseen_labels:  # strict zero-shot: candidates are the held-out descriptions only
        rows = np.array([label in held for label in y], dtype=bool)
        _, targets = _label_indices([label for label, keep in zip(y, rows) if keep], unseen_labels)
        sub = text[[labels.index(label) for label in unseen_labels]]
        for key, value in Z.hits(Z.ranks(enc, X[rows], targets, sub)).items():
            out[f"unseen-only-{key}"] = value
    return out


def _handle(msg: Message, context: Context, stage: str) -> Message:
    cfg = msg.content["config"]
    server_round = int(cfg.get("server-round", 0))
    run_id = msg.metadata.run_id
    config, model, rows = None, None, 0
    try:
        config, engine = site_context(context)
        require_verified(context)  # the app bundle passed the site's FAB pin (node/learn/fabpin.py)
        model = parse_model_spec(str(cfg["model-spec"]))
        data = training_rows(engine, config, model, config.site_name)
        rows = len(data.y)
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        if stage == "train":
            new_arrays, used, loss = local_train(model, arrays, data.X, data.y, cfg)
            metrics = {"num-examples": used, "loss": loss, "suppressed-features": len(data.suppressed)}
            content = RecordDict({"arrays": ArrayRecord([np.asarray(a, dtype=np.float64) for a in new_arrays]),
                                  "metrics": MetricRecord(metrics)})
        else:
            metrics = suppress_small_groups(local_evaluate(model, arrays, data.X, data.y, cfg), config)
            metrics["num-examples"] = metrics["n"]
            content = RecordDict({"metrics": MetricRecord(metrics),
                                  "site": ConfigRecord({"site": config.site_name})})
        audit_round(config, run_id, server_round, stage, model, "ok", None, rows,
                    {**metrics, "suppressed_features": data.suppressed} if data.suppressed else metrics)
        return Message(content, reply_to=msg)
    except (Refusal, ModelSpecError, ConfigError) as exc:  # what the reply says: cdm.errors.reply_of
        status, code, reason = reply_of(exc)
        audit_round(config, run_id, server_round, stage, model, status, code, rows, None)
        return Message(Error(code=1, reason=f"{code}: {reason}"), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "evaluate")
