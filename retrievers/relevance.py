"""Is a page worth the LLM's prefill time? Relevance scores against the question.

A scorer maps ``(question, passages of one page) -> score`` (the max over the
page's passages: one relevant section makes a page relevant).

* ``bm25``: BM25+ over the page's own passages (rank_bm25). BM25+ rather than
  Okapi because Okapi's IDF goes negative on a one- or two-passage page, which
  makes thresholds meaningless; BM25+ is > 0 iff some question term occurs.
  No model needed, microseconds per page.
* ``embed``: max cosine between the question and the passages (MiniLM);
  thresholds mean the same on every page, costs ~10 ms of CPU per passage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rank_bm25 import BM25Plus

Scorer = Callable[[str, Sequence[str]], float]

STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its of on or "
    "that the this to was what when where which who why will with you your".split()
)


def terms(text: str) -> list[str]:
    """Lower-case word terms minus stopwords (identifiers like __init__ survive)."""
    return [t for t in re.findall(r"[a-z0-9_]+", text.lower()) if t not in STOPWORDS]


def bm25_score(question: str, passages: Sequence[str]) -> float:
    docs = [terms(p) for p in passages]
    q = terms(question)
    if not q or not any(docs):
        return 0.0
    docs = [d or ["_"] for d in docs]
    return float(max(BM25Plus(docs).get_scores(q)))


def embedding_score(question: str, passages: Sequence[str]) -> float:
    from retrievers.embed import embed_texts

    if not passages:
        return 0.0
    vecs = embed_texts([question, *passages])
    return float((vecs[1:] @ vecs[0]).max())


def make_scorer(spec: str | Scorer) -> Scorer:
    if callable(spec):
        return spec
    if spec == "bm25":
        return bm25_score
    if spec == "embed":
        return embedding_score
    raise ValueError(f"scorer must be 'bm25', 'embed' or a callable, got {spec!r}")
