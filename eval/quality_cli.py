"""`stream2llm eval-quality`: the question set through a real server, both retrievers.

Prints a per-retriever table (recall@k, contains-gold accuracy, token F1,
identical-output rate streaming vs non-streaming, latencies) and the
accuracy-vs-chunk curve, writes everything as JSON and draws the curve as a PNG.
Exits 1 if any streamed output differs from its one-shot twin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _cache_dir() -> Path:
    return Path(os.environ.get("STREAM2LLM_CACHE", Path.home() / ".cache" / "stream2llm"))


def load_or_build_index(passages: list[Any]) -> Any:
    """The HNSW index over ``passages``, cached; rebuilt if the cache holds other passages
    (another Python's pydoc topics, a partial write)."""
    from retrievers.hnsw import HnswIndex, IndexFormatError

    path = _cache_dir() / f"quality-index-pydoc-{len(passages)}"
    try:
        index = HnswIndex.load(path)
        if [p.id for p in index.passages] == [p.id for p in passages]:
            return index
    except (IndexFormatError, OSError, ValueError):
        pass
    print(f"embedding {len(passages)} passages for the HNSW index (once; cached in {path})")
    index = HnswIndex.build(passages, progress=True)
    index.save(path)
    return index


def _fail(msg: str) -> int:
    print(f"stream2llm eval-quality: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from eval.qa_data import QuestionSetError, load_questions
    from eval.quality import RETRIEVERS, QualityRun, Settings
    from eval.quality_report import curve, plot_curve, summarize, tables
    from eval.quality_site import SiteSearch, generate_corpus_site, serve_corpus_site
    from retrievers.corpus import builtin_passages
    from srt_ext.launch import launch_server
    from srt_ext.server import resolve_model_path

    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be >= 1")
    if args.k < 1 or args.max_new_tokens < 1:
        return _fail("-k and --max-new-tokens must be >= 1")
    retrievers = args.retrievers.split(",")
    bad = [r for r in retrievers if r not in RETRIEVERS]
    if bad:
        return _fail(f"unknown retriever(s) {bad}; choose from {','.join(RETRIEVERS)}")
    passages = builtin_passages()
    try:
        questions = load_questions(args.questions, known_passages={p.id for p in passages},
                                   limit=args.limit)
    except QuestionSetError as exc:
        return _fail(str(exc))
    settings = Settings(k=args.k, max_new_tokens=args.max_new_tokens,
                        search_delay_s=args.search_delay, page_delay_s=args.page_delay,
                        curve=not args.no_curve)
    t_start = time.monotonic()
    if args.index:
        from retrievers.hnsw import HnswIndex, IndexFormatError

        try:
            index = HnswIndex.load(args.index)
        except IndexFormatError as exc:
            return _fail(str(exc))
    else:
        index = load_or_build_index(passages)
    model = resolve_model_path(args.model_path)
    tok = AutoTokenizer.from_pretrained(model)
    tok.model_max_length = 1 << 30  # the server checks the model's context, not the tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    records = []
    with tempfile.TemporaryDirectory(prefix="s2l-corpus-site-") as root:
        paths = generate_corpus_site(root, passages)
        with launch_server(model_path=args.model_path, max_total_tokens=args.max_total_tokens,
                           threads=args.threads) as srv, \
                serve_corpus_site(root, delay_s=settings.page_delay_s) as site:
            t_ready = time.monotonic()
            runner = QualityRun(srv.url, tokenize, settings, index, SiteSearch(passages, site),
                                paths)
            try:
                jobs = [(q, r) for q in questions for r in retrievers]
                for q, r in tqdm(jobs, desc="questions x retrievers", unit="q"):
                    records.append(runner.answer(r, q))
            finally:
                runner.close()
    wall = time.monotonic() - t_start
    print(tables(records))
    same = sum(r.same_output for r in records)
    print(f"identical outputs streaming vs non-streaming: {same}/{len(records)}")
    print(f"model {model}; {len(questions)} questions x {len(retrievers)} retrievers in "
          f"{wall:.0f} s ({time.monotonic() - t_ready:.0f} s answering)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(model), "settings": asdict(settings), "questions": len(questions),
        "retrievers": retrievers, "wall_s": wall, "answer_s": time.monotonic() - t_ready,
        "summary": summarize(records), "curve": curve(records),
        "records": [r.to_json() for r in records],
    }
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"json: {out / 'quality.json'}")
    if report["curve"]:
        print(f"plot: {plot_curve(report['curve'], out / 'quality_curve.png')}")
    return 0 if same == len(records) else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval-quality", help="answer quality of streamed RAG on a question set")
    p.add_argument("--questions", help="question set JSONL (default: the built-in set)")
    p.add_argument("--limit", type=int, help="only the first N questions (quick runs)")
    p.add_argument("--retrievers", default=",".join(("search", "crawl")),
                   help="comma-separated: search (HNSW, update mode), crawl (append mode)")
    p.add_argument("--index", help="a prebuilt HNSW index dir (`stream2llm index build`; "
                   "default: one over the built-in corpus, built once and cached)")
    p.add_argument("--model-path", help="checkpoint dir (default: the server's default model)")
    p.add_argument("-k", type=int, default=3, help="passages/pages in the final context")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--search-delay", type=float, default=0.4,
                   help="seconds per progressive-search step (a remote store's latency)")
    p.add_argument("--page-delay", type=float, default=0.3,
                   help="seconds the local site takes per page (a web server's latency)")
    p.add_argument("--no-curve", action="store_true",
                   help="skip the answers after each non-final chunk (about half the time)")
    p.add_argument("--threads", type=int, default=0, help="engine threads (0: torch default)")
    p.add_argument("--max-total-tokens", type=int, default=32768, help="KV pool size")
    p.add_argument("--out", default="out/quality", help="where quality.json and the PNG go")
    p.set_defaults(func=run)
