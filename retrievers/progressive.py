"""Progressive vector search: refined top-k versions of the prompt, as they come.

Update mode sends the server a whole new input each time retrieval improves;
the server keeps KV only up to the longest common prefix (LCP) with the
previous version. So two things matter here:

* emit only when the top-k *set* changed (an identical input is wasted work);
* order documents so successive versions share a long prefix: documents that
  stayed in the top-k keep their previous positions, newcomers go after them
  (``order="stable"``). Plain score order (``order="score"``) reshuffles the
  prompt whenever a newcomer outranks an old document, throwing away KV.

Refinement strategies (both end with an exact scan, so the final top-k set is
the true one):

* ``"ef"``: re-query the HNSW graph with a growing search breadth ``ef``;
* ``"shards"``: the index is hash-partitioned (label mod n) and shards answer
  one after another, as in a distributed vector store; results are merged.
* ``"beam"``: the paper's ANNS driver: a DiskANN-style best-first search whose
  candidate pool's top-k is emitted after every round (retrievers/beam.py); it
  ends on the converged pool, not on an exact scan.

``step_delay_s`` models per-step latency of a remote store (0 = as fast as
the local index goes, which for small corpora is microseconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from retrievers.prompt import PLAIN_LAYOUT, PromptLayout
from stream2llm.lcp import common_prefix_len as lcp_len  # the one LCP (str or token lists)

if TYPE_CHECKING:
    from retrievers.hnsw import Hit, HnswIndex

Order = Literal["stable", "score"]
Strategy = Literal["ef", "shards", "beam"]

FINAL_STEP = "exact"


@dataclass(frozen=True)
class Version:
    """One emission: the whole request input at time ``t_s`` (from search start).

    ``changed`` is False only for a final version whose top-k equals the previous
    emission (the stream still needs its final marker); ``lcp_chars`` is the prefix
    shared with the previous emission's text (0 for the first)."""

    t_s: float
    docs: tuple[Hit, ...]
    text: str
    final: bool
    step: str = ""
    changed: bool = True
    lcp_chars: int = 0

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]


def doc_block(doc: Hit) -> str:
    """How one passage appears in the prompt (title first)."""
    return f"[{doc.title}]\n{doc.text}"


def render(docs: Sequence[Hit], question: str, layout: PromptLayout = PLAIN_LAYOUT) -> str:
    """The whole prompt of one version: layout head + one piece per document + the
    question and closing tokens (question last: it never changes, but whatever
    follows a changed document is recomputed anyway). See retrievers/prompt.py."""
    return layout.whole([layout.piece(doc_block(d)) for d in docs], question)


def order_hits(prev: Sequence[Hit], new: Sequence[Hit], order: Order = "stable") -> list[Hit]:
    """Order the new top-k: by score, or survivors in their previous order then
    newcomers by score."""
    by_score = sorted(new, key=lambda h: -h.score)
    if order == "score":
        return by_score
    if order != "stable":
        raise ValueError(f"order must be 'stable' or 'score', got {order!r}")
    new_by_id = {h.id: h for h in new}
    kept = [new_by_id[h.id] for h in prev if h.id in new_by_id]
    kept_ids = {h.id for h in kept}
    return kept + [h for h in by_score if h.id not in kept_ids]


def lcp_tokens(a: str, b: str, tokenize: Callable[[str], Sequence[object]] = str.split) -> int:
    """LCP in tokens of ``tokenize`` (whitespace tokens by default)."""
    return lcp_len(tokenize(a), tokenize(b))


def _in_shard(s: int, n_shards: int) -> Callable[[int], bool]:
    """Filter for shard ``s`` of ``n_shards`` (labels round-robin over the shards)."""
    return lambda lab: lab % n_shards == s


def _merge(a: Sequence[Hit], b: Sequence[Hit], k: int) -> list[Hit]:
    seen: dict[str, Hit] = {}
    for h in [*a, *b]:
        seen.setdefault(h.id, h)
    return sorted(seen.values(), key=lambda h: -h.score)[:k]


def search_steps(
    index: HnswIndex,
    qvec: np.ndarray,
    k: int,
    *,
    strategy: Strategy = "shards",
    ef_schedule: Sequence[int] | None = None,
    n_shards: int = 4,
) -> Iterator[tuple[str, list[Hit]]]:
    """The raw refinement steps ``(label, top-k)``, computed lazily; the last is
    always the exact scan, labelled :data:`FINAL_STEP`."""
    if strategy == "ef":
        for ef in ef_schedule or (k, 2 * k, 4 * k, 8 * k):
            yield f"ef={ef}", index.search_vector(qvec, k, ef=ef)
    elif strategy == "shards":
        if n_shards < 1:
            raise ValueError("n_shards must be >= 1")
        best: list[Hit] = []
        for s in range(n_shards):
            part = index.search_vector(qvec, k, ef=2 * k, filter=_in_shard(s, n_shards))
            best = _merge(best, part, k)
            yield f"shard {s + 1}/{n_shards}", best
    elif strategy == "beam":
        from retrievers.beam import KnnGraph, beam_steps

        graph = getattr(index, "_beam_graph", None)
        if graph is None or len(graph.vectors) != len(index):
            graph = KnnGraph(index)
            index._beam_graph = graph  # type: ignore[attr-defined]
        prev: tuple[str, list[Hit]] | None = None
        for step in beam_steps(index, graph, qvec, k):
            if prev is not None:
                yield prev
            prev = step
        yield FINAL_STEP, prev[1] if prev else []  # the converged pool (no exact scan)
        return
    else:
        raise ValueError(f"strategy must be 'ef', 'shards' or 'beam', got {strategy!r}")
    yield FINAL_STEP, index.exact_vector(qvec, k)


class _Versioner:
    """Turns raw steps into emissions: skip unchanged sets, order, render, LCP."""

    def __init__(self, question: str, order: Order, layout: PromptLayout) -> None:
        self.question, self.order, self.layout = question, order, layout
        self.prev: list[Hit] = []
        self.prev_text: str | None = None

    def step(self, t_s: float, label: str, hits: list[Hit], final: bool) -> Version | None:
        changed = self.prev_text is None or {h.id for h in hits} != {h.id for h in self.prev}
        if not changed and not final:
            return None
        docs = order_hits(self.prev, hits, self.order) if changed else self.prev
        text = render(docs, self.question, self.layout)
        lcp = lcp_len(self.prev_text, text) if self.prev_text is not None else 0
        self.prev, self.prev_text = docs, text
        return Version(t_s, tuple(docs), text, final, label, changed, lcp)


async def progressive_search(
    index: HnswIndex,
    question: str,
    k: int = 5,
    *,
    strategy: Strategy = "shards",
    order: Order = "stable",
    ef_schedule: Sequence[int] | None = None,
    n_shards: int = 4,
    step_delay_s: float = 0.0,
    layout: PromptLayout = PLAIN_LAYOUT,
) -> AsyncGenerator[Version, None]:
    """Yield a :class:`Version` each time the top-k changes; the last one has
    ``final=True`` and the exact top-k set. Embedding runs in a worker thread so
    other retrieval (or a live stream) keeps going meanwhile."""
    t0 = time.monotonic()
    qvec = await asyncio.to_thread(index.embed_question, question)
    v = _Versioner(question, order, layout)
    for label, hits in search_steps(index, qvec, k, strategy=strategy,
                                    ef_schedule=ef_schedule, n_shards=n_shards):
        if step_delay_s:
            await asyncio.sleep(step_delay_s)
        out = v.step(time.monotonic() - t0, label, hits, final=label == FINAL_STEP)
        if out is not None:
            yield out


def progressive_search_sync(
    index: HnswIndex,
    question: str,
    k: int = 5,
    *,
    strategy: Strategy = "shards",
    order: Order = "stable",
    ef_schedule: Sequence[int] | None = None,
    n_shards: int = 4,
    step_delay_s: float = 0.0,
    layout: PromptLayout = PLAIN_LAYOUT,
) -> Iterator[Version]:
    """Blocking twin of :func:`progressive_search` (scripts, benchmarks)."""
    t0 = time.monotonic()
    qvec = index.embed_question(question)
    v = _Versioner(question, order, layout)
    for label, hits in search_steps(index, qvec, k, strategy=strategy,
                                    ef_schedule=ef_schedule, n_shards=n_shards):
        if step_delay_s:
            time.sleep(step_delay_s)
        out = v.step(time.monotonic() - t0, label, hits, final=label == FINAL_STEP)
        if out is not None:
            yield out
