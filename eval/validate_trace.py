"""The traces of `stream2llm validate`, read the same way by the simulator and the replay.

Why a module of its own: a validation only means something if the simulated
run and the measured run see the same trace. The generator draws a workload
(token ids); ``scale_query`` shrinks its token counts so a tiny CPU model serves
it in minutes while the structure (chunks, shared prefixes of update versions)
and the timing (arrivals, chunk offsets) stay exactly as drawn; ``render``
writes one vocabulary word per token id (text, as a RAG client sends it, so the
server pays tokenization); ``engine_view`` tokenizes that text exactly as the
server's API room does (srt_ext.api.service: each chunk on its own, an update
version whole), which is what the simulator is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream2llm.trace import Chunk, Query


@dataclass(frozen=True)
class Case:
    """One validation run: a workload at one load on one KV pool."""

    name: str
    workload: str  # crawler | anns
    qps: float
    num_queries: int = 30
    seed: int = 0
    token_scale: float = 0.1  # token counts x this (stride subsampling)
    max_tokens: int = 1536  # no input longer than this (the tiny model's context is 4096)
    delay_multiplier: float = 1.0  # every delay stretched (stream2llm sim's --stretch all)
    kv_capacity_tokens: int = 16384


def _stride_sample(ids: Sequence[int], stride: int) -> tuple[int, ...]:
    """Every ``stride``-th token from position 0: two versions sharing a prefix of L
    tokens still share the first ceil(L / stride) tokens, so update LCPs scale too."""
    return tuple(ids[::stride])


def scale_query(q: Query, token_scale: float, max_tokens: int) -> Query:
    """``q`` with every input ~``token_scale`` as long, none over ``max_tokens``.

    append: each chunk keeps its first ``len / stride`` tokens (at least one), so
    the template at the start of chunk 0 is kept and concatenation still gives the
    whole input; update: each version keeps every ``stride``-th token. The stride
    grows for a query whose input would exceed ``max_tokens``. Times are untouched.
    """
    if not 0 < token_scale <= 1:
        raise ValueError(f"token_scale must be in (0, 1], got {token_scale}")
    ids = [c.token_ids or () for c in q.chunks]
    longest = sum(map(len, ids)) if q.mode == "append" else max(map(len, ids))
    stride = max(round(1 / token_scale), math.ceil(longest / max(1, max_tokens)))
    if q.mode == "append":
        new = [tuple(t[: max(1, -(-len(t) // stride))]) for t in ids]
        while sum(map(len, new)) > max_tokens:  # the rounding up may overshoot a little
            j = max(range(len(new)), key=lambda k: len(new[k]))
            new[j] = new[j][:-1]
    else:
        new = [_stride_sample(t, stride) for t in ids]
    chunks = tuple(Chunk(c.t_s, token_ids=n, final=c.final)
                   for c, n in zip(q.chunks, new, strict=True))  # fmt: skip
    return Query(q.qid, q.arrival_s, q.mode, chunks, q.max_new_tokens, dict(q.meta))


def vocab_words(tok: Any) -> list[str]:
    """Lower-case alphabetic whole words of the tokenizer's vocabulary, sorted: each
    is one token, so a rendered word comes back as exactly one id."""
    vocab = tok.tok.get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and len(w) >= 3)
    one = [w for w in words[:4000] if len(tok.encode(w)) == 1]
    if len(one) < 64:
        raise ValueError("the tokenizer has too few single-token words to render traces")
    return one


def render(q: Query, words: Sequence[str]) -> Query:
    """Text with one word per token id (a leading space between words, none at the
    start of an input), so chunk texts concatenate to the whole input's text."""
    chunks = []
    for j, c in enumerate(q.chunks):
        ws = [words[t % len(words)] for t in c.token_ids or ()]
        sep = "" if (j == 0 or q.mode == "update") else " "
        chunks.append(Chunk(c.t_s, text=sep + " ".join(ws), final=c.final))
    return Query(q.qid, q.arrival_s, q.mode, tuple(chunks), q.max_new_tokens, dict(q.meta))


def engine_view(q: Query, tok: Any) -> Query:
    """Token ids as the server's API room makes them from ``q``'s text (Service._ids:
    ``first`` for an update version or a stream's first chunk)."""
    chunks = []
    for j, c in enumerate(q.chunks):
        first = q.mode == "update" or j == 0
        chunks.append(Chunk(c.t_s, token_ids=tuple(tok.encode(c.text or "", first=first)),
                            final=c.final))  # fmt: skip
    return Query(q.qid, q.arrival_s, q.mode, tuple(chunks), q.max_new_tokens, dict(q.meta))


def build(case: Case, tok: Any) -> tuple[list[Query], list[Query]]:
    """(text queries for the replay, token-id queries for the simulator)."""
    from eval.sim import stretch_delays
    from eval.workloads import generate

    qs = generate(case.workload, qps=case.qps, num_queries=case.num_queries, seed=case.seed,
                  delay_multiplier=case.delay_multiplier)  # fmt: skip
    qs = stretch_delays(qs, case.delay_multiplier, "all")
    words = vocab_words(tok)
    text = [render(scale_query(q, case.token_scale, case.max_tokens), words) for q in qs]
    return text, [engine_view(q, tok) for q in text]
