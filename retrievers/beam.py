"""DiskANN-style best-first search whose candidate pool is emitted as it refines.

The paper's ANNS driver streams "the current candidate pool" of a DiskANN search:
each version is template + the pool's top-k *in pool order* (best first) + question.
This module reproduces that driver on our own vectors, so the LCP structure of
consecutive versions can be measured rather than assumed (docs/workloads.md).

The graph is a k-nearest-neighbour graph (out-degree ``degree``, plus reverse edges
so it is navigable), found with the HNSW index itself; the search is Vamana's greedy
search: a pool of the ``pool_size`` best candidates seen, sorted by distance; each
round expands the ``beam_width`` best unexpanded ones (DiskANN reads W nodes per
round) and inserts their neighbours. It starts at the medoid and stops when every
pooled candidate has been expanded. One step per round: ``(label, top-k)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrievers.hnsw import Hit, HnswIndex


class KnnGraph:
    """Neighbour lists over ``vectors`` (unit rows) and the medoid entry point."""

    def __init__(self, index: HnswIndex, degree: int = 16) -> None:
        n = len(index)
        if n < 2:
            raise ValueError("a beam search needs at least 2 indexed passages")
        d = min(degree + 1, n)
        index.hnsw.set_ef(max(64, 2 * d))
        labels, _ = index.hnsw.knn_query(index.vectors, k=d, num_threads=1)
        adj: list[set[int]] = [set() for _ in range(n)]
        for i, row in enumerate(labels.tolist()):
            for j in row:
                if j != i:
                    adj[i].add(j)
                    adj[j].add(i)  # reverse edges: reachability from the medoid
        self.neighbours = [np.fromiter(sorted(a), dtype=np.int64) for a in adj]
        centre = index.vectors.mean(axis=0)
        self.medoid = int(np.argmax(index.vectors @ centre))
        self.vectors = index.vectors


def beam_steps(
    index: HnswIndex,
    graph: KnnGraph,
    qvec: np.ndarray,
    k: int,
    *,
    pool_size: int = 64,
    beam_width: int = 4,
) -> Iterator[tuple[str, list[Hit]]]:
    """One ``(label, top-k best first)`` per search round (the pool order)."""
    if pool_size < k:
        raise ValueError("pool_size must be at least k")
    q = np.asarray(qvec, dtype=np.float32)
    score: dict[int, float] = {graph.medoid: float(graph.vectors[graph.medoid] @ q)}
    pool = [graph.medoid]
    expanded: set[int] = set()
    rnd = 0
    while True:
        todo = [c for c in pool if c not in expanded][:beam_width]
        if not todo:
            return
        rnd += 1
        for c in todo:
            expanded.add(c)
            nb = [int(j) for j in graph.neighbours[c] if int(j) not in score]
            if nb:
                s = graph.vectors[nb] @ q
                score.update(zip(nb, s.tolist(), strict=True))
                pool.extend(nb)
        pool = sorted(set(pool), key=lambda c: (-score[c], c))[:pool_size]
        top = pool[:k]
        yield f"round {rnd}", index._hits(top, [score[c] for c in top])
