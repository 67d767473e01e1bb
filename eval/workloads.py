"""Seeded synthetic workloads fitted to the Stream2LLM paper's published trace statistics.

The paper's crawler (append) and ANNS (update) traces are not downloadable, so we draw
queries whose chunk counts, gaps, sizes and durations match the quantiles the artifact
reports (docs/workloads.md has the fitting and a generated-vs-published table). Output is
``stream2llm.trace.Query`` so generated and recorded traces replay through the same code.

Randomness: one ``numpy.random.Generator`` per concern (arrivals, content), spawned from
the seed and drawn query by query, so the first k queries of a run with N > k queries are
the same queries, and changing ``qps`` or ``delay_multiplier`` only rescales times.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from pathlib import Path

import numpy as np

from stream2llm.trace import Chunk, Mode, Query, read_trace

WORKLOADS = ("crawler", "anns")

# Structural words get fixed ids below RESERVED, so every query carries the *same*
# template ids (shareable by the radix tree) and as_text() can print them as real text.
TEMPLATE_WORDS = (
    "Answer the question based only on the provided context. If the context does not "
    "contain the answer, say that you do not know. Be concise."
).split()
CONTEXT_WORD, QUESTION_WORD = "\nContext:", "\nQuestion:"
_STRUCT_WORDS = (*TEMPLATE_WORDS, CONTEXT_WORD, QUESTION_WORD)
RESERVED = 512
TEMPLATE_IDS: tuple[int, ...] = tuple(range(1, len(TEMPLATE_WORDS) + 1))
CONTEXT_ID = len(TEMPLATE_WORDS) + 1
QUESTION_ID = len(TEMPLATE_WORDS) + 2
_FIXED = len(TEMPLATE_IDS) + 2  # template + "Context:" + "Question:"


Z5, Z75, Z95, Z99 = -1.6449, 0.6745, 1.6449, 2.3263  # standard-normal scores


@dataclass(frozen=True)
class LogQuantiles:
    """A distribution given by its quantiles: log(value) is piecewise linear in the normal
    score z through the published (z, value) knots, extended past the ends with the end
    slopes. It reproduces every published quantile by construction, which one lognormal
    cannot (the crawler gaps are skewed differently below and above the median)."""

    knots: tuple[tuple[float, float], ...]  # (z, value), z ascending, >= 2 knots

    def at(self, z: np.ndarray) -> np.ndarray:
        zs = np.array([k[0] for k in self.knots])
        lv = np.log([k[1] for k in self.knots])
        lo, hi = (lv[1] - lv[0]) / (zs[1] - zs[0]), (lv[-1] - lv[-2]) / (zs[-1] - zs[-2])
        out = np.interp(z, zs, lv)
        out = np.where(z < zs[0], lv[0] + (z - zs[0]) * lo, out)
        return np.exp(np.where(z > zs[-1], lv[-1] + (z - zs[-1]) * hi, out))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.at(rng.standard_normal(n))


@dataclass(frozen=True)
class Fit:
    """Distribution parameters for one workload; see docs/workloads.md for the fitting."""

    mode: Mode
    gaps_s: LogQuantiles  # between consecutive chunks
    first_median_s: float  # first chunk after the search latency: lognormal
    first_sigma: float
    tokens: LogQuantiles  # final input length
    tokens_max: int
    question_tokens: tuple[int, int]  # uniform range, inclusive
    max_chunks: int


CRAWLER = Fit(
    mode="append",
    # P5, P50, P95, P99, and the max (35 s) at the z of 1 in ~29.6k gaps (4,322 traces).
    gaps_s=LogQuantiles(((Z5, 0.082), (0.0, 0.701), (Z95, 3.08), (Z99, 5.29), (3.99, 35.0))),
    first_median_s=2.65,  # tuned so durations match (mean 9.87, P50 9.29, P95 16.7)
    first_sigma=0.35,
    # P50, P75, P95; the unpublished lower half gets the log-slope (1.45) that makes the
    # mean 8,889 (P5 = 5749 * exp(-1.45 * 1.645) ~ 530 tokens).
    tokens=LogQuantiles(((Z5, 530.0), (0.0, 5749.0), (Z75, 11167.0), (Z95, 28372.0))),
    tokens_max=120_000,
    question_tokens=(10, 30),
    max_chunks=17,
)
ANNS = Fit(
    mode="update",
    # P50, P95, P99; below the median unpublished: mirrored P50-P95 log-slope.
    gaps_s=LogQuantiles(((Z5, 0.0367**2 / 0.699), (0.0, 0.0367), (Z95, 0.699), (Z99, 2.08))),
    first_median_s=3.42,  # tuned so durations match (mean 4.47, P50 3.90, P95 8.51)
    first_sigma=0.48,
    # P50, P95; lower log-slope 0.52 makes the mean 13,006.
    tokens=LogQuantiles(((Z5, 10126.0 * math.exp(-0.52 * -Z5)), (0.0, 10126.0), (Z95, 30618.0))),
    tokens_max=120_000,
    question_tokens=(8, 20),
    max_chunks=26,
)
FITS = {"crawler": CRAWLER, "anns": ANNS}
# chunks = 1 + BetaBinomial(16, a, b), a/(a+b) = 6.86/16 and a+b = 10: mean 7.86, median 8,
# and both ends of the published range 1..17 occur in a few thousand queries.
CRAWLER_BETABINOM = (16, 6.86 / 16 * 10, (1 - 6.86 / 16) * 10)
CRAWLER_RHO = 0.5  # Gaussian-copula correlation of page count and tokens (more pages, more text)
# Gap z-scores share -rho * (the count's z): queries with many pages get them faster. Each
# gap keeps its N(0, 1) score, so the pooled gap quantiles are unchanged, but the spread of
# total durations narrows to the published P50/P95.
CRAWLER_GAP_RHO = 0.2
ANNS_NEGBIN = (2.0, 3.42)  # versions = 1 + NegBinomial(r, mean): mean 4.42, median 4
ANNS_TOPK = 10  # documents per version
ANNS_NEW_DOCS_P = 0.2  # per version: 1 + Binomial(k - 1, p) new documents enter the pool
# Share of multi-version queries whose final version repeats the previous one: a
# best-first (DiskANN-style) search stops changing its top-k before it knows it has
# converged, so the final emission, sent when the search ends, carries the same pool.
# Measured with the paper's driver on our corpora (eval/record_traces.py, `beam`):
# 100% of queries (docs/workloads.md, "LCP between versions").
ANNS_FINAL_REPEAT = 1.0


def _betabinom_cdf(n: int, a: float, b: float) -> np.ndarray:
    """CDF table (without its last entry, 1): searchsorted(table, u) is the quantile of u,
    which lets a Gaussian copula couple the chunk count with the token count."""

    def lbeta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    pmf = [math.comb(n, k) * math.exp(lbeta(k + a, n - k + b) - lbeta(a, b)) for k in range(n + 1)]
    return np.minimum(np.cumsum(pmf), 1.0)[:-1]


_COUNT_CDF = _betabinom_cdf(*CRAWLER_BETABINOM)


def _size_bias() -> float:
    """E[z1 | a gap drawn from the pool]: queries with more chunks add more gaps, so the
    pooled mean of z1 is E[z1 (n - 1)] / E[n - 1]; subtracting it re-centres pooled gaps."""
    z = np.linspace(-8, 8, 16001)
    w = np.exp(-0.5 * z**2)
    u = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    n_minus_1 = np.searchsorted(_COUNT_CDF, u).astype(float)
    return float((w * z * n_minus_1).sum() / (w * n_minus_1).sum())


_Z1_BIAS = _size_bias()


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
    n = 1 + int(np.searchsorted(_COUNT_CDF, 0.5 * (1 + math.erf(z1 / math.sqrt(2)))))
    total = int(min(float(fit.tokens.at(np.array(z2))), fit.tokens_max))
    q_len = int(rng.integers(fit.question_tokens[0], fit.question_tokens[1] + 1))
    pages = [ids.draw(s) for s in _split(rng, total - _FIXED - q_len, n)]
    question = ids.draw(q_len)
    first = fit.first_median_s * math.exp(fit.first_sigma * rng.standard_normal())
    e = rng.standard_normal(n - 1)
    gaps = fit.gaps_s.at(math.sqrt(1 - CRAWLER_GAP_RHO**2) * e - CRAWLER_GAP_RHO * (z1 - _Z1_BIAS))
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


# Common English words; with a leading space each is one token in Llama-3 / GPT-style BPE
# vocabularies, so a text chunk of n words tokenizes to roughly n tokens.
COMMON_WORDS = tuple(
    """time year people way day man thing woman life child world school state family student
    group country problem hand part place case week company system program question work
    government number night point home water room mother area money story fact month lot right
    study book eye job word business issue side kind head house service friend father power hour
    game line end member law car city community name president team minute idea kid body
    information back parent face others level office door health person art war history party
    result change morning reason research girl guy moment air teacher force education river
    music table paper report market price light field water food tree color plant road stone
    language energy travel north south east west summer winter spring season island ocean
    mountain forest desert village capital border nation church king queen army battle peace
    science theory method data model process value rate cost growth trade bank film series
    album song award player club league season match goal record director actor novel author
    page chapter letter church museum garden bridge tower station street port coast lake valley
    found made known used called built born played wrote became began held led won moved lived
    large small early late major local national public general special new old young great
    high low long short first last next second third main best full free real true simple
    about after before between during under over into through against among around without
    also only often still already never always later soon again once very most more less""".split()
)


def _text_words(tokenizer_vocab: Sequence[str] | None) -> tuple[str, ...]:
    """Words for content ids: from a real tokenizer's vocabulary (whole-word pieces marked
    with a leading-space byte, as BPE/SentencePiece write them) or the built-in list."""
    if not tokenizer_vocab:
        return COMMON_WORDS
    words = sorted(
        {
            t[1:]
            for t in tokenizer_vocab
            if t[:1] in ("Ġ", "▁") and t[1:].isalpha() and t[1:].isascii() and 3 <= len(t) <= 9
        }
    )
    return tuple(words) if len(words) >= 64 else COMMON_WORDS


def as_text(queries: Iterable[Query], tokenizer_vocab: Sequence[str] | None = None) -> list[Query]:
    """Render token-id queries as text for replay against a real server.

    Every id maps to one word (structural ids to the real template, "Context:" and
    "Question:"), and each word is written with a leading space, so concatenated append
    chunks equal the rendered whole prompt and update versions keep their shared prefixes.
    """
    words = _text_words(tokenizer_vocab)
    table = list(_STRUCT_WORDS) + [""] * (RESERVED - len(_STRUCT_WORDS))

    def render(ids: Sequence[int]) -> str:
        return "".join(
            " " + (words[i % len(words)] if i >= RESERVED else table[i - 1]) for i in ids
        )

    out = []
    for q in queries:
        chunks = []
        for j, c in enumerate(q.chunks):
            if c.token_ids is None:
                chunks.append(c)
                continue
            txt = render(c.token_ids)
            if j == 0 or q.mode == "update":
                txt = txt[1:]
            chunks.append(Chunk(t_s=c.t_s, text=txt, final=c.final))
        out.append(Query(q.qid, q.arrival_s, q.mode, tuple(chunks), q.max_new_tokens, dict(q.meta)))
    return out


# The statistics the paper publishes, as "<series>_<mean|min|max|pNN>[_s]".
STATS = (
    "chunks_mean", "chunks_p50", "chunks_min", "chunks_max",
    "gap_p5_s", "gap_p50_s", "gap_p95_s", "gap_p99_s", "gap_max_s",
    "tokens_mean", "tokens_p50", "tokens_p75", "tokens_p95",
    "duration_mean_s", "duration_p50_s", "duration_p95_s",
)  # fmt: skip
# Source: shared/notes/paper-facts.md, "Workloads" (the artifact's trace statistics);
# None where the paper publishes no number. PAPER_QUERIES: the traces' sizes.
PAPER_TARGETS: dict[str, dict[str, float | None]] = {
    "crawler": dict(zip(STATS, (7.86, 8, 1, 17, 0.082, 0.701, 3.08, 5.29, 35.0, 8889, 5749,
                                11167, 28372, 9.87, 9.29, 16.7), strict=True)),
    "anns": dict(zip(STATS, (4.42, 4, 1, 26, None, 0.0367, 0.699, 2.08, None, 13006, 10126,
                             None, 30618, 4.47, 3.90, 8.51), strict=True)),
}  # fmt: skip
PAPER_QUERIES = {"crawler": 4322, "anns": 500}


def _input_tokens(q: Query) -> int:
    """Final input length: token ids, or words for text traces (about one token each)."""
    last = q.chunks if q.mode == "append" else q.chunks[-1:]
    return sum(
        len(c.token_ids) if c.token_ids is not None else len((c.text or "").split()) for c in last
    )


def summarize(queries: Iterable[Query]) -> dict[str, float]:
    """STATS over any traces (generated or recorded), plus "queries".

    Gaps are between consecutive chunks of a query (the search latency before the first
    chunk is not a gap); duration is the final chunk's offset from the query's arrival.
    """
    series: dict[str, list[float]] = {"chunks": [], "gap": [], "tokens": [], "duration": []}
    for q in queries:
        t = [c.t_s for c in q.chunks]
        series["chunks"].append(len(t))
        series["gap"].extend(b - a for a, b in pairwise(t))
        series["tokens"].append(_input_tokens(q))
        series["duration"].append(q.retrieval_s)
    if not series["chunks"]:
        raise ValueError("no queries to summarize")
    out = {"queries": float(len(series["chunks"]))}
    for key in STATS:
        name, stat = key.split("_")[:2]
        x = np.asarray(series[name] or [0.0], dtype=float)
        if stat in ("mean", "min", "max"):
            out[key] = float(getattr(x, stat)())
        else:
            out[key] = float(np.percentile(x, float(stat[1:])))
    return out


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
