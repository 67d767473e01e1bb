"""Workloads from our own retrievers: record traces, measure their LCP structure.

`stream2llm record-traces --out out/traces` records, with the trace recorder
(retrievers/stream.py ``search_to_query`` / ``crawl_to_query``):

* progressive HNSW search (k=10) over the built-in corpus and over a larger
  generated corpus (20,000 noisy copies of the built-in vectors, :func:`large_index`), with the paper's
  driver (``beam``: a DiskANN-style search's candidate pool, in pool order) and with
  our sharded search in score and stable order;
* the crawler over the local site.

Prompts are tokenized with the MiniLM word-piece tokenizer (shipped with the
embedder). It prints, next to the synthetic generator's, the prefix that each update
shares with the previous version (:mod:`eval.lcp_profile`; docs/workloads.md).
:func:`expand` turns a recorded trace into a simulator workload with the fitted
timings and the paper's mean input length, so only the prompt structure differs.

No serving engine is involved (no server is started): recording runs our retrievers
and the embedder's tokenizer, ``--sim-qps`` the simulator with a hardware profile.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.lcp_profile import lcp_profile
from stream2llm.trace import Chunk, Query, read_trace, write_trace

K = 10  # documents per version, as the paper's ANNS driver
VARIANTS = (("beam", "score"), ("shards", "score"), ("shards", "stable"))


# ---- recording --------------------------------------------------------------------------
def large_index(base: Any, size: int = 20_000, seed: int = 0, noise: float = 0.35) -> Any:
    """A larger generated corpus, ~45x the built-in one, without embedding anything:
    each document is a word window of a random built-in passage and its vector is that
    passage's vector plus Gaussian noise (norm ``noise``), renormalized. Clusters of
    near-duplicates around every topic, as web corpora have, and enough points that a
    best-first search takes many rounds."""
    from retrievers.corpus import Passage
    from retrievers.embed import normalize
    from retrievers.hnsw import HnswIndex

    rng = np.random.default_rng(seed)
    parents = rng.integers(0, len(base), size=size)
    vecs = base.vectors[parents] + noise * rng.standard_normal(
        (size, base.dim)).astype(np.float32) / math.sqrt(base.dim)
    passages = []
    for i, p in enumerate(parents.tolist()):
        words = base.passages[p].text.split()
        n = int(rng.integers(60, 160))
        s = int(rng.integers(0, max(len(words) - n, 0) + 1))
        passages.append(Passage(f"gen-{i}", base.passages[p].title, " ".join(words[s : s + n])))
    index = HnswIndex(M=16, ef_construction=100, capacity=size, embedder=base.embedder)
    index.add(passages, vectors=normalize(vecs))
    return index


def _index(name: str, cache: Path) -> Any:
    from retrievers.corpus import builtin_passages
    from retrievers.hnsw import HnswIndex, IndexFormatError

    d = cache / f"index-{name}"
    try:
        return HnswIndex.load(d)
    except IndexFormatError:
        if name == "builtin":
            index = HnswIndex.build(builtin_passages(), progress=True)
        else:
            index = large_index(_index("builtin", cache))
        index.save(d)
        return index


def _tokenizer() -> Any:
    from retrievers.embed import get_model

    tok = get_model().tokenizer
    return lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"])


def _tokenized(q: Query, tokenize: Any) -> Query:
    """Text chunks -> token-id chunks (append chunks are tokenized one by one)."""
    chunks = tuple(Chunk(c.t_s, tokenize(c.text or ""), None, c.final) for c in q.chunks)
    return Query(q.qid, q.arrival_s, q.mode, chunks, q.max_new_tokens, q.meta)


async def _record_search(index: Any, questions: Sequence[str], strategy: str, order: str,
                         tag: str) -> list[Query]:
    from retrievers.stream import search_to_query

    return [await search_to_query(index, text, qid=f"{tag}-{i}", k=K, strategy=strategy,
                                  order=order, max_new_tokens=1)
            for i, text in enumerate(questions)]


async def _record_crawls(questions: Sequence[str]) -> list[Query]:
    from retrievers.site import serve_site
    from retrievers.stream import crawl_to_query

    out = []
    with serve_site(slow_s=0.2) as base:
        for i, text in enumerate(questions):
            out.append(await crawl_to_query([f"{base}/index.html"], text, qid=f"crawl-{i}",
                                            max_new_tokens=1, max_pages=10, max_depth=3))
    return out


def record_all(out_dir: Path, cache: Path, questions: Sequence[str]) -> dict[str, list[Query]]:
    """Record every trace (token ids), write ``<name>.jsonl`` under ``out_dir``."""
    from tqdm import tqdm

    tokenize = _tokenizer()
    out_dir.mkdir(parents=True, exist_ok=True)
    traces: dict[str, list[Query]] = {}
    jobs = [(c, s, o) for c in ("builtin", "large") for s, o in VARIANTS]
    for corpus, strategy, order in tqdm(jobs, desc="recording", unit="trace"):
        index = _index(corpus, cache)
        name = f"anns-{corpus}-{strategy}-{order}"
        qs = asyncio.run(_record_search(index, questions, strategy, order, name))
        traces[name] = [_tokenized(q, tokenize) for q in qs]
        write_trace(out_dir / f"{name}.jsonl", traces[name])
    crawls = asyncio.run(_record_crawls(questions[:10]))
    traces["crawler-site"] = [_tokenized(q, tokenize) for q in crawls]
    write_trace(out_dir / "crawler-site.jsonl", traces["crawler-site"])
    return traces


# ---- simulator workloads from recorded structure ---------------------------------------
def expand(
    recorded: Sequence[Query],
    workload: str,
    qps: float,
    num_queries: int,
    seed: int,
    delay_multiplier: float = 1.0,
    stretch_first: bool = True,
) -> list[Query]:
    """A simulator workload with the recorded prompts' structure and the fitted timing.

    Query i replays recorded query ``i mod n``: its versions (or chunks) in order, every
    token id widened to ``f`` consecutive ids so the mean final input matches the
    paper's (LCPs scale by exactly ``f``); copies get disjoint ids. Arrivals are
    Poisson at ``qps``; the first chunk's delay and the gaps are drawn from the
    workload's fit (eval/workloads/fits.py) and multiplied by ``delay_multiplier`` (the
    first delay too unless ``stretch_first`` is False).
    """
    from eval.workloads import FITS, PAPER_TARGETS, RESERVED

    if not recorded:
        raise ValueError("no recorded queries")
    fit = FITS[workload]
    target = float(PAPER_TARGETS[workload]["tokens_mean"] or 1)
    mean = float(np.mean([len(q.final_token_ids()) for q in recorded]))
    f = max(1, round(target / max(mean, 1.0)))
    vocab = max(max(c.token_ids or (0,)) for q in recorded for c in q.chunks) + 1
    rng = np.random.default_rng(seed)
    out, arrival = [], 0.0
    for i in range(num_queries):
        if i:
            arrival += float(rng.exponential(1.0)) / qps
        r = recorded[i % len(recorded)]
        base = RESERVED + (i // len(recorded)) * vocab * f
        first = fit.first_median_s * math.exp(fit.first_sigma * rng.standard_normal())
        gaps = fit.gaps_s.sample(rng, len(r.chunks) - 1) * delay_multiplier
        first *= delay_multiplier if stretch_first else 1.0
        times = [first, *(first + np.cumsum(gaps)).tolist()]
        chunks = tuple(
            Chunk(t, tuple(base + t_id * f + j for t_id in (c.token_ids or ()) for j in range(f)),
                  None, c.final)
            for t, c in zip(times, r.chunks, strict=True)
        )
        out.append(Query(f"{r.qid}#{i}", arrival, r.mode, chunks, 1,
                         {"recorded": r.qid, "token_factor": f}))
    return out


def simulate_next_to_synthetic(
    traces: dict[str, list[Query]], qps: float, num_queries: int, seed: int,
    delay_multiplier: float, hardware: str, schedulers: Sequence[str] = ("fcfs", "ours"),
) -> list[dict[str, object]]:
    """TTFT ratios (non-streaming fcfs / scheduler) on the synthetic ANNS workload and on
    every recorded update trace expanded to the same timing and mean length."""
    from eval.metrics import percentiles
    from eval.sim import SimConfig, simulate, stretch_delays
    from eval.workloads import generate
    from scheduler.cost_model import CostModel

    cm = CostModel.load(hardware)
    def workload(name: str) -> list[Query]:  # one at a time: expanded traces are large
        if name == "synthetic":
            return stretch_delays(generate("anns", qps, num_queries, seed,
                                           delay_multiplier=delay_multiplier), delay_multiplier)
        return expand(traces[name], "anns", qps, num_queries, seed, delay_multiplier)

    names = ["synthetic", *(n for n, qs in traces.items() if qs and qs[0].mode == "update")]
    rows: list[dict[str, object]] = []
    for name in names:
        qs = workload(name)
        runs = [("fcfs", False), ("ours", False), *((p, True) for p in schedulers)]
        res = {}
        for pol, streaming in runs:
            cfg = SimConfig(policy=pol, streaming=streaming, hardware=hardware, token_budget=8192)
            res[cfg.label()] = percentiles(simulate(qs, cfg, cm).ttft_s)
        base = res["non-streaming"]
        for label, p in res.items():
            rows.append({"workload": name, "scheduler": label, "p50_s": p["p50"],
                         "p99_s": p["p99"], "x_p50": base["p50"] / p["p50"],
                         "x_p99": base["p99"] / p["p99"]})
    return rows


def run(args: argparse.Namespace) -> int:
    from eval.bench_retrievers import QUESTIONS
    from eval.metrics import format_table
    from eval.workloads import iter_generate

    out, cache = Path(args.out), Path(args.cache or Path(args.out) / "cache")
    questions = [q for q in QUESTIONS if q.strip()][: args.questions]
    if args.no_record:
        traces = {p.stem: list(read_trace(p)) for p in sorted(out.glob("*.jsonl"))}
        if not traces:
            raise SystemExit(f"--no-record: no *.jsonl traces under {out}")
    else:
        traces = record_all(out, cache, questions)
    rows = []
    synth = list(iter_generate("anns", 1.0, args.synthetic_queries, args.seed))
    named = [("synthetic generator (eval/workloads)", synth)]
    named += [(n, qs) for n, qs in traces.items() if qs and qs[0].mode == "update"]
    for name, qs in named:
        p = lcp_profile(qs)
        rows.append({"trace": name, "versions": p.versions_mean, "updates": p.updates,
                     "shared_mean": p.mean, "p10": p.p10, "p50": p.p50, "p90": p.p90,
                     "changed_mean": p.changed_mean, "changed_p50": p.changed_p50,
                     "final_repeats": p.final_same,
                     "final_vs_prev": p.final_mean, "final_weighted": p.final_weighted,
                     "final_tokens": p.final_tokens_mean})
    print(format_table(rows, list(rows[0])))
    for n, qs in traces.items():
        if qs and qs[0].mode == "append":
            toks = [len(q.final_token_ids()) for q in qs]
            print(f"{n}: {len(qs)} crawls, {np.mean([len(q.chunks) for q in qs]):.2f} chunks, "
                  f"{np.mean(toks):.0f} tokens per query (append: every chunk extends the prefix)")
    if args.sim_qps:
        rows = simulate_next_to_synthetic(traces, args.sim_qps, args.sim_queries, args.seed,
                                          args.sim_delay_multiplier, args.hardware)
        print(f"\nsimulated: ANNS QPS {args.sim_qps:g} x{args.sim_delay_multiplier:g}, "
              f"{args.sim_queries} queries, seed {args.seed}, {args.hardware}")
        print(format_table(rows, list(rows[0])))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("record-traces",
                       help="record workloads from our retrievers and compare their LCPs")
    p.add_argument("--out", default="out/traces", help="directory for the JSONL traces")
    p.add_argument("--cache", default=None, help="index cache directory (default OUT/cache)")
    p.add_argument("--questions", type=int, default=50, help="how many questions to record")
    p.add_argument("--synthetic-queries", type=int, default=500,
                   help="synthetic ANNS queries to compare against")
    p.add_argument("--seed", type=int, default=1, help="synthetic generator seed")
    p.add_argument("--no-record", action="store_true",
                   help="only summarize the traces already under --out")
    p.add_argument("--sim-qps", type=float, default=None,
                   help="also simulate every recorded update trace (expanded) and the "
                   "synthetic ANNS workload at this QPS")
    p.add_argument("--sim-queries", type=int, default=500)
    p.add_argument("--sim-delay-multiplier", type=float, default=1.0)
    p.add_argument("--hardware", default="h200-tp2-llama3-8b-mfu75")
    p.set_defaults(func=run)
