"""Model code both sides run: a numpy logistic model and torch networks, as lists of arrays.

Parameters travel as a list of float64 numpy arrays (a Flower ``ArrayRecord``), in a fixed order:
the logistic model is one vector ``[intercept, beta_1..beta_p]``; a torch network is its
``state_dict`` values in order.

Logistic regression, mean negative log-likelihood with an optional ridge term ``l2/2 |beta|^2``
(intercept unpenalised).  Its gradient and Hessian at ``w`` are row means, so a row-weighted average
over sites (what FedAvg computes) is the pooled gradient and Hessian, and a Newton step on them is
the pooled Newton step: federated Newton-Raphson gives the pooled MLE up to rounding (GLORE, Wu et
al., JAMIA 2012;19:758).  :func:`newton_fit` is the pooled reference the tests compare against.
"""

from __future__ import annotations

import io

import numpy as np

from cdm.learn.modelspec import ModelSpec


def pack_matrix(matrix: np.ndarray) -> bytes:
    """A float32 matrix as ``.npy`` bytes (a ConfigRecord value: text embeddings in messages)."""
    out = io.BytesIO()
    np.save(out, np.asarray(matrix, dtype=np.float32), allow_pickle=False)
    return out.getvalue()


def unpack_matrix(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False).astype(np.float64)


def design(X: np.ndarray) -> np.ndarray:
    """Prepend the intercept column."""
    X = np.asarray(X, dtype=float).reshape(len(X), -1)
    return np.hstack([np.ones((len(X), 1)), X])


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _penalty(w: np.ndarray, l2: float) -> np.ndarray:
    mask = np.ones_like(w)
    mask[0] = 0.0
    return l2 * mask


def logistic_stats(w: np.ndarray, Xd: np.ndarray, y: np.ndarray, l2: float = 0.0):
    """(mean loss, mean gradient, mean Hessian) of the penalised logistic loss at ``w``."""
    z = Xd @ w
    p = _sigmoid(z)
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * float(w[1:] @ w[1:]))
    grad = Xd.T @ (p - y) / len(y) + _penalty(w, l2) * w
    hess = (Xd * (p * (1 - p))[:, None]).T @ Xd / len(y) + np.diag(_penalty(w, l2))
    return loss, grad, hess


def newton_step(w: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    return w - np.linalg.solve(hess, grad)


def newton_fit(X: np.ndarray, y: np.ndarray, l2: float = 0.0, rounds: int = 25, tol: float = 1e-12) -> np.ndarray:
    """Pooled penalised-logistic MLE by Newton-Raphson, from zero (the federated run's start)."""
    Xd, y = design(X), np.asarray(y, dtype=float)
    w = np.zeros(Xd.shape[1])
    for _ in range(rounds):
        _, g, h = logistic_stats(w, Xd, y, l2)
        step = np.linalg.solve(h, g)
        w = w - step
        if float(np.max(np.abs(step))) < tol:
            break
    return w


def gradient_descent(w: np.ndarray, Xd: np.ndarray, y: np.ndarray, lr: float, epochs: int,
                     l2: float = 0.0, mu: float = 0.0, anchor: np.ndarray | None = None) -> np.ndarray:
    """Local full-batch gradient descent; ``mu > 0`` adds FedProx's proximal term
    ``mu/2 |w - anchor|^2`` (Li et al., MLSys 2020)."""
    anchor = w.copy() if anchor is None else anchor
    for _ in range(epochs):
        _, g, _ = logistic_stats(w, Xd, y, l2)
        w = w - lr * (g + mu * (w - anchor))
    return w


def initial_arrays(model: ModelSpec, feature_text_embeddings: np.ndarray | None = None) -> list[np.ndarray]:
    """The run's starting parameters (deterministic in ``training.seed``)."""
    if model.model.type == "logistic":
        return [np.zeros(len(model.features) + 1)]
    return [a.copy() for a in torch_arrays(build_network(model, feature_text_embeddings))]


# -- torch networks ------------------------------------------------------------------------------


def build_network(model: ModelSpec, feature_text_embeddings: np.ndarray | None = None):
    """The torch module for ``mlp`` (features -> hidden -> 1 logit) or ``patient_encoder``."""
    import torch

    torch.manual_seed(model.training.seed)
    if model.model.type == "patient_encoder":
        from cdm.learn.zeroshot import PatientEncoder

        return PatientEncoder(len(model.features), model.model.hidden[0], model.model.embedding_dim,
                              feature_text_embeddings)
    widths = [len(model.features), *model.model.hidden]
    layers: list = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], 1))
    return torch.nn.Sequential(*layers).double()


def torch_arrays(module) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().astype(np.float64) for t in module.state_dict().values()]


def load_torch_arrays(module, arrays: list[np.ndarray]) -> None:
    import torch

    keys = list(module.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} parameter arrays, got {len(arrays)}")
    state = {k: torch.as_tensor(np.asarray(a), dtype=torch.float64) for k, a in zip(keys, arrays)}
    module.load_state_dict(state, strict=True)


def train_torch(module, loss_fn, lr: float, epochs: int, mu: float = 0.0) -> float:
    """Local full-batch Adam epochs on ``loss_fn(module)``; FedProx term ``mu/2 |w - w_global|^2``."""
    import torch

    anchor = [p.detach().clone() for p in module.parameters()]
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(module)
        total = loss
        if mu > 0:
            total = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(module.parameters(), anchor))
        total.backward()
        opt.step()
    return float(loss.detach())


def mlp_loss(module, X: np.ndarray, y: np.ndarray):
    import torch

    logits = module(torch.as_tensor(X, dtype=torch.float64)).squeeze(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float64))


def binary_metrics(model: ModelSpec, arrays: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict:
    """Summed log-loss and correct predictions (sums pool exactly across sites)."""
    if model.model.type == "logistic":
        z = design(X) @ arrays[0]
    else:
        import torch

        net = build_network(model)
        load_torch_arrays(net, arrays)
        with torch.no_grad():
            z = net(torch.as_tensor(X, dtype=torch.float64)).squeeze(-1).numpy()
    loss_sum = float(np.sum(np.logaddexp(0.0, z) - y * z))
    correct = int(np.sum((z > 0) == (y > 0.5)))
    return {"n": int(len(y)), "loss_sum": loss_sum, "correct": correct}
