"""An hnswlib index over passages (the update-mode retriever's store).

Vectors are unit-norm MiniLM embeddings in inner-product space, so
``score = 1 - distance`` is cosine similarity. Labels are positions in
``passages``; the raw vectors are kept too (``vectors.npy``) because an exact
scan is what defines "the right answer" a progressive search must end on, and
because re-embedding to rebuild would cost far more than the disk space.

The progressive search itself lives in :mod:`retrievers.progressive` (import
``progressive_search`` and ``Version`` from there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from retrievers.corpus import Passage
from retrievers.embed import DIM, MODEL_NAME, Embedder, default_embedder, normalize


@dataclass(frozen=True)
class Hit:
    """One search result: the passage, its label in the index and its cosine score."""

    label: int
    id: str
    title: str
    text: str
    score: float


class IndexFormatError(ValueError):
    """A directory that does not hold a saved index, or an index used wrongly."""


class HnswIndex:
    """Passages + their vectors + an HNSW graph over them; grows with :meth:`add`."""

    def __init__(
        self,
        *,
        dim: int = DIM,
        M: int = 16,
        ef_construction: int = 200,
        embedder: Embedder | None = None,
        capacity: int = 1024,
    ) -> None:
        self.dim, self.M, self.ef_construction = dim, M, ef_construction
        self._embedder = embedder
        self.passages: list[Passage] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.hnsw = hnswlib.Index(space="ip", dim=dim)
        self.hnsw.init_index(max_elements=max(capacity, 1), ef_construction=ef_construction, M=M)

    # -- building -------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    @classmethod
    def build(
        cls,
        passages: Sequence[Passage],
        *,
        embedder: Embedder | None = None,
        progress: bool = False,
        M: int = 16,
        ef_construction: int = 200,
    ) -> HnswIndex:
        """Embed ``passages`` (progress bar if asked) and index them."""
        emb = embedder or default_embedder(progress=progress)
        index = cls(M=M, ef_construction=ef_construction, embedder=embedder,
                    capacity=max(len(passages), 16))
        index.add(passages, vectors=emb([p.embed_text for p in passages]) if passages else None)
        return index

    def add(self, passages: Sequence[Passage], vectors: np.ndarray | None = None) -> list[int]:
        """Index more passages (embedding them unless ``vectors`` are given); the graph
        is resized geometrically so that many small adds stay cheap. Returns labels."""
        if not passages:
            return []
        if vectors is None:
            vectors = self.embedder([p.embed_text for p in passages])
        vectors = normalize(vectors)
        if vectors.shape != (len(passages), self.dim):
            raise IndexFormatError(f"vectors shape {vectors.shape} != ({len(passages)}, {self.dim})")
        start = len(self.passages)
        need = start + len(passages)
        if need > self.hnsw.get_max_elements():
            self.hnsw.resize_index(max(need, 2 * self.hnsw.get_max_elements()))
        labels = np.arange(start, need)
        self.hnsw.add_items(vectors, labels, num_threads=1)
        self.passages.extend(passages)
        self.vectors = np.vstack([self.vectors, vectors])
        return labels.tolist()

    def __len__(self) -> int:
        return len(self.passages)

    # -- persistence ----------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write ``index.bin``, ``vectors.npy``, ``passages.jsonl`` and ``meta.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.hnsw.save_index(str(out / "index.bin"))
        np.save(out / "vectors.npy", self.vectors)
        with open(out / "passages.jsonl", "w", encoding="utf-8") as f:
            for p in self.passages:
                f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        meta = {"model": MODEL_NAME, "space": "ip", "dim": self.dim, "M": self.M,
                "ef_construction": self.ef_construction, "count": len(self)}
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, index_dir: str | Path, *, embedder: Embedder | None = None) -> HnswIndex:
        """Load what :meth:`save` wrote; clear error if ``index_dir`` is not an index."""
        d = Path(index_dir)
        missing = [n for n in ("index.bin", "vectors.npy", "passages.jsonl", "meta.json")
                   if not (d / n).is_file()]
        if missing:
            raise IndexFormatError(f"{d} is not an index directory (missing {', '.join(missing)})")
        meta = json.loads((d / "meta.json").read_text())
        index = cls(dim=int(meta["dim"]), M=int(meta["M"]),
                    ef_construction=int(meta["ef_construction"]), embedder=embedder)
        with open(d / "passages.jsonl", encoding="utf-8") as f:
            index.passages = [Passage(**json.loads(line)) for line in f if line.strip()]
        index.vectors = np.load(d / "vectors.npy").astype(np.float32)
        if len(index.passages) != len(index.vectors) or len(index.passages) != meta["count"]:
            raise IndexFormatError(f"{d}: passages, vectors and meta.json disagree on the count")
        index.hnsw = hnswlib.Index(space="ip", dim=index.dim)
        index.hnsw.load_index(str(d / "index.bin"), max_elements=max(len(index.passages), 1))
        return index

    # -- search ---------------------------------------------------------------
    def embed_question(self, question: str) -> np.ndarray:
        return self.embedder([question])[0]

    def _hits(self, labels: Sequence[int], scores: Sequence[float]) -> list[Hit]:
        out = []
        for lab, s in zip(labels, scores, strict=True):
            p = self.passages[int(lab)]
            out.append(Hit(int(lab), p.id, p.title, p.text, float(s)))
        return out

    def search_vector(
        self,
        qvec: np.ndarray,
        k: int,
        *,
        ef: int | None = None,
        filter: Callable[[int], bool] | None = None,
    ) -> list[Hit]:
        """Approximate top-k (best first) with search breadth ``ef`` (default max(k, 64):
        a tiny ef strands greedy search in whichever cluster it enters first)."""
        k = min(k, len(self))
        if k <= 0:
            return []
        self.hnsw.set_ef(max(ef or 64, k))
        try:
            labels, dists = self.hnsw.knn_query(qvec.reshape(1, -1), k=k, num_threads=1,
                                                filter=filter)
        except RuntimeError:  # fewer than k reachable (tiny filtered subset): go exact
            return self.exact_vector(qvec, k, filter=filter)
        return self._hits(labels[0], 1.0 - dists[0])

    def exact_vector(
        self, qvec: np.ndarray, k: int, *, filter: Callable[[int], bool] | None = None
    ) -> list[Hit]:
        """Brute-force top-k over the stored vectors: the ground truth."""
        scores = self.vectors @ np.asarray(qvec, dtype=np.float32)
        if filter is not None:
            mask = np.array([filter(i) for i in range(len(scores))], dtype=bool)
            scores = np.where(mask, scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argsort(-scores, kind="stable")[:k]
        return self._hits(top.tolist(), scores[top].tolist())

    def query(self, question: str, k: int = 5, *, ef: int | None = None) -> list[Hit]:
        """Plain (one-shot) search for a question."""
        return self.search_vector(self.embed_question(question), k, ef=ef)


__all__ = ["Hit", "HnswIndex", "IndexFormatError"]
