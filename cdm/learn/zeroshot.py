"""Zero-shot rare-disease matching: a patient encoder placed next to frozen disease descriptions.

Descriptions are embedded once by a frozen sentence encoder (all-MiniLM-L6-v2, 384-d, at the
coordinator: :mod:`coordinator.learn.text`).  The patient encoder maps a patient's feature vector
(e.g. HPO phenotype indicators) into the same space; it is trained federatively with a CLIP-style
contrastive objective (Radford et al., ICML 2021), cross-entropy over cosine similarities / T against
the descriptions of the *training* diseases only.  At test time a patient's description ranking over
all diseases, including those never trained on, is read off the same similarities (zero-shot
classification from class descriptions; cf. Socher et al., NeurIPS 2013).

Encoder: ``h = (x @ E) / max(1, sum x)`` — the mean of per-feature vectors ``E`` — then
``z = normalise(h + MLP(h))``.  ``E`` starts from the text embeddings of the feature names when they
are given (the site then starts from "the words for my phenotypes"), and the MLP's last layer starts
at zero, so before any training the model is that text-only baseline and federated rounds refine it.
"""

from __future__ import annotations

import numpy as np
import torch


class PatientEncoder(torch.nn.Module):
    def __init__(self, n_features: int, hidden: int, dim: int, feature_text: np.ndarray | None = None):
        super().__init__()
        if feature_text is not None:
            feature_text = np.asarray(feature_text, dtype=np.float64)
            if feature_text.shape != (n_features, dim):
                raise ValueError(f"feature text embeddings must be {n_features} x {dim}, got {feature_text.shape}")
            init = torch.as_tensor(feature_text)
        else:
            init = torch.randn(n_features, dim, dtype=torch.float64) / np.sqrt(dim)
        self.features = torch.nn.Parameter(init.clone())
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim)).double()
        torch.nn.init.zeros_(self.mlp[2].weight)
        torch.nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x @ self.features) / x.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.nn.functional.normalize(h + self.mlp(h), dim=-1)


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def contrastive_loss(encoder: PatientEncoder, X: np.ndarray, targets: np.ndarray, text: np.ndarray,
                     temperature: float) -> torch.Tensor:
    """Mean cross-entropy of each patient's own description among ``text`` (rows: candidate labels)."""
    z = encoder(torch.as_tensor(X, dtype=torch.float64))
    logits = z @ torch.as_tensor(normalise(text)).T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.as_tensor(targets, dtype=torch.long))


def ranks(encoder: PatientEncoder, X: np.ndarray, targets: np.ndarray, text: np.ndarray) -> np.ndarray:
    """1-based rank of each patient's true description among the rows of ``text``."""
    with torch.no_grad():
        z = encoder(torch.as_tensor(X, dtype=torch.float64)).numpy()
    sims = z @ normalise(text).T
    own = sims[np.arange(len(targets)), targets]
    return 1 + (sims > own[:, None]).sum(axis=1)


def hits(rank: np.ndarray, ks=(1, 5)) -> dict:
    """Counts (not rates) so sites' results pool by summing."""
    return {"n": int(len(rank)), **{f"top{k}": int((rank <= k).sum()) for k in ks}}
