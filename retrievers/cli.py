"""`stream2llm index build|query` and `stream2llm crawl`.

Both commands print results as they arrive (that is the point of streaming
retrieval) and can record the run as a trace that `stream2llm sim` and
`stream2llm replay` accept.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stream2llm.trace import write_trace


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    idx = subparsers.add_parser("index", help="build or query an HNSW passage index")
    idx.set_defaults(func=lambda _a: idx.print_help() or 2)
    isub = idx.add_subparsers(dest="index_command", metavar="ACTION")

    b = isub.add_parser("build", help="embed a corpus and save an index")
    b.add_argument("--corpus", help="directory of .txt/.md, a .jsonl, .txt or .md file "
                   "(default: the built-in CPython help topics)")
    b.add_argument("--out", required=True, help="index directory to write")
    b.add_argument("--limit", type=int, help="index only the first N passages")
    b.add_argument("--M", type=int, default=16, help="HNSW graph degree")
    b.add_argument("--ef-construction", type=int, default=200)
    b.set_defaults(func=cmd_index_build)

    q = isub.add_parser("query", help="search an index (optionally progressively)")
    q.add_argument("--index", required=True, help="index directory (from `index build`)")
    q.add_argument("--question", required=True)
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--progressive", action="store_true", help="emit refined top-k versions")
    q.add_argument("--strategy", choices=["shards", "ef", "beam"], default="shards")
    q.add_argument("--shards", type=int, default=4, help="shards for --strategy shards")
    q.add_argument("--order", choices=["stable", "score"], default="stable")
    q.add_argument("--step-delay", type=float, default=0.0,
                   help="simulated latency per refinement step (s)")
    q.add_argument("--trace", help="write the run as an update-mode trace (JSONL)")
    add_prompt_args(q)
    q.set_defaults(func=cmd_index_query)

    c = subparsers.add_parser("crawl", help="crawl from seed URLs, print pages as they arrive")
    c.add_argument("--seed", action="append", default=[], help="seed URL (repeatable)")
    c.add_argument("--local-site", action="store_true",
                   help="serve the built-in demo site on loopback and seed from it")
    c.add_argument("--question", required=True)
    c.add_argument("--max-pages", type=int, default=10)
    c.add_argument("--max-depth", type=int, default=2)
    c.add_argument("--timeout", type=float, default=10.0, help="per-URL fetch timeout (s)")
    c.add_argument("--per-host", type=int, default=4, help="concurrent requests per host")
    c.add_argument("--scorer", choices=["bm25", "embed"], default="bm25")
    c.add_argument("--min-score", type=float, help="relevance threshold "
                   "(default 1.0 for bm25, 0.3 for embed)")
    c.add_argument("--any-host", action="store_true", help="follow links to other hosts")
    c.add_argument("--ignore-robots", action="store_true")
    c.add_argument("--trace", help="write the run as an append-mode trace (JSONL)")
    add_prompt_args(c)
    c.set_defaults(func=cmd_crawl)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    """How recorded chunks are laid out (retrievers/prompt.py)."""
    p.add_argument("--model-path", default=None,
                   help="model whose chat template lays out the prompt: smollm2-135m-instruct "
                   "(default), tiny-random, or a checkpoint dir")
    p.add_argument("--prompt", choices=("chat", "plain"), default="chat",
                   help="chat: the model's chat template; plain: no template")


def layout_from_args(args: argparse.Namespace) -> Any:
    """The prompt layout the flags ask for; raises ChatTemplateError / ModelStoreError."""
    from retrievers.prompt import PLAIN_LAYOUT, PromptLayout

    if args.prompt == "plain":
        return PLAIN_LAYOUT
    from srt_ext.engines.reference.model_store import resolve_model

    return PromptLayout.from_model_dir(resolve_model(args.model_path))


def _layout_or_fail(args: argparse.Namespace) -> Any:
    from retrievers.prompt import ChatTemplateError
    from srt_ext.engines.reference.model_store import ModelStoreError

    try:
        return layout_from_args(args)
    except ChatTemplateError as exc:
        return _fail(str(exc))
    except ModelStoreError as exc:
        return _fail(str(exc))


def _fail(msg: str) -> int:
    print(f"stream2llm: error: {msg}", file=sys.stderr)
    return 2


def cmd_index_build(args: argparse.Namespace) -> int:
    from retrievers.corpus import load_corpus
    from retrievers.hnsw import HnswIndex

    try:
        passages = load_corpus(args.corpus, limit=args.limit)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    print(f"embedding {len(passages)} passages ({args.corpus or 'built-in CPython topics'})")
    index = HnswIndex.build(passages, progress=True, M=args.M,
                            ef_construction=args.ef_construction)
    out = index.save(args.out)
    print(f"saved {len(index)} passages to {out}")
    return 0


def cmd_index_query(args: argparse.Namespace) -> int:
    from retrievers.hnsw import HnswIndex, IndexFormatError
    from retrievers.progressive import Version, lcp_tokens
    from retrievers.stream import search_to_query

    if args.k < 1:
        return _fail("-k must be >= 1")
    try:
        index = HnswIndex.load(args.index)
    except IndexFormatError as exc:
        return _fail(str(exc))
    if not args.progressive:
        for rank, h in enumerate(index.query(args.question, args.k), 1):
            print(f"{rank:2d}. {h.score:.3f}  {h.id}  {h.title}")
        return 0
    layout = _layout_or_fail(args)
    if isinstance(layout, int):
        return layout
    index.embed_question("warm-up")  # load the model now so emission times show search only
    shown = {"text": ""}

    def show(v: Version) -> None:
        kept_tok = lcp_tokens(shown["text"], v.text) if shown["text"] else 0
        tag = "final" if v.final else "     "
        print(f"{v.t_s * 1000:8.1f} ms  {tag} {v.step:<11} top-{len(v.docs)}: {v.ids}  "
              f"LCP kept {v.lcp_chars}/{len(v.text)} chars, {kept_tok}/{len(v.text.split())} "
              "tokens" + ("" if v.changed else "  (unchanged)"), flush=True)
        shown["text"] = v.text

    query = asyncio.run(search_to_query(
        index, args.question, k=args.k, strategy=args.strategy, order=args.order,
        n_shards=args.shards, step_delay_s=args.step_delay, on_version=show, layout=layout))
    if args.trace:
        write_trace(args.trace, [query])
        print(f"trace: {args.trace} ({len(query.chunks)} versions)")
    return 0


def cmd_crawl(args: argparse.Namespace) -> int:
    from retrievers.crawler import CrawlConfig, CrawlStats, Page
    from retrievers.htmltext import normalize_url
    from retrievers.site import serve_site
    from retrievers.stream import crawl_to_query, page_block

    if not args.seed and not args.local_site:
        return _fail("give at least one --seed URL (or --local-site)")
    bad = [s for s in args.seed if normalize_url(s) is None]
    if bad:
        return _fail(f"not an http(s) URL: {', '.join(bad)}")
    if args.max_pages < 1 or args.max_depth < 0:
        return _fail("--max-pages must be >= 1 and --max-depth >= 0")
    if args.trace and not Path(args.trace).resolve().parent.is_dir():
        return _fail(f"trace directory does not exist: {Path(args.trace).parent}")
    min_score = args.min_score if args.min_score is not None else (
        1.0 if args.scorer == "bm25" else 0.3)
    cfg = CrawlConfig(per_host_concurrency=args.per_host, timeout_s=args.timeout,
                      scorer=args.scorer, min_score=min_score, same_host=not args.any_host,
                      respect_robots=not args.ignore_robots)
    layout = _layout_or_fail(args)
    if isinstance(layout, int):
        return layout
    stats = CrawlStats()

    def show(page: Page) -> None:
        n = len(page_block(page, layout).split())
        print(f"{page.t_s * 1000:8.1f} ms  depth {page.depth}  score {page.score:6.2f}  "
              f"{n:5d} tokens  {page.url}", flush=True)

    with ExitStack() as stack:
        seeds = list(args.seed)
        if args.local_site:
            seeds.append(stack.enter_context(serve_site(slow_s=0.5)) + "/")
        query = asyncio.run(crawl_to_query(
            seeds, args.question, max_pages=args.max_pages, max_depth=args.max_depth,
            config=cfg, stats=stats, on_page=show, layout=layout))
    skipped = {k: v for k, v in vars(stats).items() if k not in ("skipped", "accepted") and v}
    print(f"accepted {stats.accepted} pages in {query.retrieval_s:.2f} s; other outcomes: "
          f"{skipped or 'none'}")
    if args.trace:
        write_trace(args.trace, [query])
        print(f"trace: {args.trace} ({len(query.chunks)} chunks)")
    return 0
