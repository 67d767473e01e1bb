"""Seeded synthetic workloads fitted to the Stream2LLM paper's published trace statistics.

Queries are drawn from the fits in :mod:`eval.workloads.fits`, with the ids of
:mod:`eval.workloads.text`. Output is ``stream2llm.trace.Query`` so generated and recorded
traces replay through the same code.

Randomness: one ``numpy.random.Generator`` per concern (arrivals, content), spawned from
the seed and drawn query by query, so the first k queries of a run with N > k queries are
the same queries, and changing ``qps`` or ``delay_multiplier`` only rescales times.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from eval.workloads.fits import (
    ANNS_FINAL_REPEAT,
    ANNS_NEGBIN,
    ANNS_NEW_DOCS_P,
    ANNS_TOPK,
    CRAWLER_COUNT_CDF,
    CRAWLER_GAP_RHO,
    CRAWLER_RHO,
    CRAWLER_Z1_BIAS,
    FITS,
    PAPER_QUERIES,
    PAPER_TARGETS,
    WORKLOADS,
    Fit,
    summarize,
)
from eval.workloads.text import CONTEXT_ID, QUESTION_ID, RESERVED, TEMPLATE_IDS, as_text
from stream2llm.trace import Chunk, Query, read_trace

_FIXED = len(TEMPLATE_IDS) + 2  # template + "Context:" + "Question:"


def _split(rng: np.random.Generator, total: int, parts: int, minimum: int = 8) -> list[int]:
    """Split ``total`` tokens into ``parts`` positive sizes (Dirichlet(2) shares)."""
    total = max(total, parts * minimum)
    shares = rng.dirichlet(np.full(parts, 2.0))
    sizes = minimum + np.floor(shares * (total - parts * minimum)).astype(int)
    sizes[-1] += total - int(sizes.sum())
    return [int(s) for s in sizes]


_Drawn = tuple[float, np.ndarray, list[tuple[int, ...]]]  # first chunk time, gaps, chunks


class _Ids:
    """Content token ids; tuples reference one shared int per id to keep big traces small."""

    def __init__(self, rng: np.random.Generator, vocab_size: int) -> None:
        if vocab_size <= RESERVED + 1:
            raise ValueError(f"vocab_size must exceed {RESERVED + 1}")
        self.rng, self.vocab_size = rng, vocab_size
        self.ints = list(range(vocab_size))

    def draw(self, n: int) -> tuple[int, ...]:
        arr = self.rng.integers(RESERVED, self.vocab_size, size=n).tolist()
        return operator.itemgetter(*arr)(self.ints) if n > 1 else tuple(arr)

    def join(self, *parts: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(chain(*parts))


class _Lengths(_Ids):
    """Shape-only stand-in: same times and lengths, every id 0; summaries of thousands of
    queries need no real ids (the ids come from their own generator, so shapes match)."""

    def draw(self, n: int) -> int:  # type: ignore[override]
        return n

    def join(self, *parts: object) -> tuple[int, ...]:  # type: ignore[override]
        return (0,) * sum(p if isinstance(p, int) else len(p) for p in parts)  # type: ignore[misc,arg-type]


def _crawler(rng: np.random.Generator, ids: _Ids, fit: Fit) -> _Drawn:
    z1 = rng.standard_normal()
    z2 = CRAWLER_RHO * z1 + math.sqrt(1 - CRAWLER_RHO**2) * rng.standard_normal()
    n = 1 + int(np.searchsorted(CRAWLER_COUNT_CDF, 0.5 * (1 + math.erf(z1 / math.sqrt(2)))))
    total = int(min(float(fit.tokens.at(np.array(z2))), fit.tokens_max))
    q_len = int(rng.integers(fit.question_tokens[0], fit.question_tokens[1] + 1))
    pages = [ids.draw(s) for s in _split(rng, total - _FIXED - q_len, n)]
    question = ids.draw(q_len)
    first = fit.first_median_s * math.exp(fit.first_sigma * rng.standard_normal())
    e = rng.standard_normal(n - 1)
    gaps = fit.gaps_s.at(math.sqrt(1 - CRAWLER_GAP_RHO**2) * e - CRAWLER_GAP_RHO * (z1 - CRAWLER_Z1_BIAS))
    head, tail = (*TEMPLATE_IDS, CONTEXT_ID), (QUESTION_ID,)
    if n == 1:
        return first, gaps, [ids.join(head, pages[0], tail, question)]
    middle = [ids.join(p) for p in pages[1:-1]]
    return first, gaps, [ids.join(head, pages[0]), *middle, ids.join(pages[-1], tail, question)]


def _anns(rng: np.random.Generator, ids: _Ids, fit: Fit) -> _Drawn:
    """Versions are built backwards from the final top-k so its length matches the target.

    Forward in time, each step inserts m new candidates at random pool positions and drops
    the last m; backwards, we remove m positions and re-append m older documents. The
    shared prefix of two versions ends at the first inserted position. The final version
    repeats the one before it (``ANNS_FINAL_REPEAT``): the search's end-of-search emission.
    """
    r, mean = ANNS_NEGBIN
    n = min(1 + int(rng.negative_binomial(r, r / (r + mean))), fit.max_chunks)
    total = int(min(fit.tokens.sample(rng, 1)[0], fit.tokens_max))
    q_len = int(rng.integers(fit.question_tokens[0], fit.question_tokens[1] + 1))
    body = total - _FIXED - q_len
    pool = [ids.draw(s) for s in _split(rng, body, ANNS_TOPK)]
    question = ids.draw(q_len)
    versions = [list(pool)]
    repeat = n > 1 and (ANNS_FINAL_REPEAT >= 1.0 or rng.random() < ANNS_FINAL_REPEAT)
    if repeat:  # the search ended without changing the pool: the final repeats it
        versions.append(list(pool))
    for _ in range(n - 1 - int(repeat)):
        m = 1 + int(rng.binomial(ANNS_TOPK - 1, ANNS_NEW_DOCS_P))
        drop = set(rng.choice(ANNS_TOPK, size=m, replace=False).tolist())
        older = [d for i, d in enumerate(versions[-1]) if i not in drop]
        sizes = rng.lognormal(math.log(max(body / ANNS_TOPK, 8)), 0.5, size=m).astype(int)
        versions.append(older + [ids.draw(max(int(s), 8)) for s in sizes])
    versions.reverse()
    first = fit.first_median_s * math.exp(fit.first_sigma * rng.standard_normal())
    head, tail = (*TEMPLATE_IDS, CONTEXT_ID), (QUESTION_ID,)
    return (
        first,
        fit.gaps_s.sample(rng, n - 1),
        [ids.join(head, *v, tail, question) for v in versions],
    )


def generate(
    workload: str,
    qps: float,
    num_queries: int,
    seed: int,
    delay_multiplier: float = 1.0,
    vocab_size: int = 32000,
    max_new_tokens: int = 1,
    text: bool = False,
) -> list[Query]:
    """Draw ``num_queries`` queries with Poisson arrivals at ``qps`` (first at t=0).

    ``delay_multiplier`` stretches the gaps *between* chunks (the paper's memory-pressure
    runs); the search latency before the first chunk is kept, since no KV is held then.
    ``text=True`` returns the as_text() rendering of the same queries.
    """
    return list(
        iter_generate(
            workload, qps, num_queries, seed, delay_multiplier, vocab_size, max_new_tokens, text
        )
    )


def iter_generate(
    workload: str,
    qps: float,
    num_queries: int,
    seed: int,
    delay_multiplier: float = 1.0,
    vocab_size: int = 32000,
    max_new_tokens: int = 1,
    text: bool = False,
    shape_only: bool = False,
) -> Iterator[Query]:
    """generate(), one query at a time: thousands of ANNS queries (every version a full
    prompt) are too big for one list. ``shape_only`` keeps times and lengths exact but
    writes every id as 0, for fast statistics."""
    if workload not in FITS:
        raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")
    if qps <= 0 or delay_multiplier <= 0:
        raise ValueError("qps and delay_multiplier must be positive")
    fit = FITS[workload]
    arrival_rng, content_rng, id_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    ids = (_Lengths if shape_only else _Ids)(id_rng, vocab_size)
    make = _crawler if workload == "crawler" else _anns
    meta = {"workload": workload, "seed": seed, "delay_multiplier": delay_multiplier}

    def queries() -> Iterator[Query]:
        arrival = 0.0
        for i in range(num_queries):
            if i:
                arrival += float(arrival_rng.exponential(1.0)) / qps
            first, gaps, chunks = make(content_rng, ids, fit)
            times = [first, *(first + np.cumsum(gaps * delay_multiplier)).tolist()]
            q = Query(
                qid=f"{workload}-{seed}-{i}",
                arrival_s=arrival,
                mode=fit.mode,
                chunks=tuple(
                    Chunk(t_s=t, token_ids=c, final=j == len(chunks) - 1)
                    for j, (t, c) in enumerate(zip(times, chunks, strict=True))
                ),
                max_new_tokens=max_new_tokens,
                meta=dict(meta),
            )
            yield as_text([q])[0] if text else q

    return queries()


def load_workload(name_or_path: str, **kw: object) -> list[Query]:
    """A workload name generates (``kw`` go to generate); anything else is a JSONL trace."""
    if name_or_path in FITS:
        return generate(name_or_path, **kw)  # type: ignore[arg-type]
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"{name_or_path!r} is neither a workload {WORKLOADS} nor a trace file")
    return list(read_trace(path))


def main(num_queries: int | None = None, seed: int = 0) -> str:
    """Print (and return) generated vs published statistics for both workloads; by default
    as many queries as the paper's traces had (so sampling noise is comparable).

    ``.venv/bin/python -c "from eval.workloads import main; main()"``
    """
    from eval.metrics import format_table

    blocks = []
    for name in WORKLOADS:
        n = num_queries or PAPER_QUERIES[name]
        got = summarize(iter_generate(name, 1.0, n, seed, shape_only=True))
        rows = [
            {"statistic": key, "paper": "-" if ref is None else ref, "generated": got[key]}
            for key, ref in PAPER_TARGETS[name].items()
        ]
        blocks.append(
            f"{name} ({n} queries, seed {seed})\n"
            + format_table(rows, ["statistic", "paper", "generated"])
        )
    out = "\n\n".join(blocks)
    print(out)
    return out
