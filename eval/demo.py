"""`stream2llm demo`: streaming RAG end to end, streaming vs non-streaming.

On a bare CPU machine it builds (or loads) an HNSW index over a corpus at hand
(CPython's help topics), starts a stream2llm server with the embedded default
model, serves a small local website and crawls it, then answers questions with
both retrievers:

* vector search (update mode): each refined top-k is a new version of the input;
* crawl (append mode): each accepted page extends the input.

Each question runs twice on the same server: *streaming* (chunks go to the
server as retrieval produces them) and *non-streaming* (the same final input,
sent in one request after retrieval; the prefix cache is flushed first so it
pays its prefill). It prints per question the retrieval time, TTFT from query
and from the final chunk for both, tokens prefilled before the final chunk and
tokens invalidated by updates, checks that both produced the same tokens, and
draws a timeline PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What does the with statement do?",
    "How are exceptions handled in a try statement?",
    "What happens when a generator function is called?",
    "How does Python look up names in nested scopes?",
]


@dataclass
class StreamRun:
    question: str
    retriever: str
    mode: str
    t0: float
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    cached_at_chunk: list[int] = field(default_factory=list)
    invalidated: int = 0
    final_ids: list[int] = field(default_factory=list)
    retrieval_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("STREAM2LLM_CACHE", Path.home() / ".cache" / "stream2llm"))


def load_or_build_index(corpus: str | None, limit: int | None) -> Any:
    from retrievers.corpus import load_corpus
    from retrievers.hnsw import HnswIndex

    name = f"demo-index-{Path(corpus).name if corpus else 'pydoc'}-{limit or 'all'}"
    path = _cache_dir() / name
    if (path / "index.bin").exists() or (path / "meta.json").exists():
        try:
            return HnswIndex.load(path)
        except Exception:  # a stale or partial index: rebuild it
            pass
    passages = load_corpus(corpus, limit=limit)
    print(f"  embedding {len(passages)} passages (all-MiniLM-L6-v2, offline)")
    index = HnswIndex.build(passages, progress=True)
    index.save(path)
    return index


async def stream_one(
    url: str, tokenize: Any, chunks: Any, run: StreamRun, sampling: dict[str, Any]
) -> StreamRun:
    """Send chunks as they come; the last one is final. Token ids are sent so the
    non-streaming baseline can send exactly the same final input."""
    from srt_ext.client import AsyncClient

    async with AsyncClient(url) as client:
        return await _stream_chunks(client, tokenize, chunks, run, sampling)


async def _stream_chunks(
    client: Any, tokenize: Any, chunks: Any, run: StreamRun, sampling: dict[str, Any]
) -> StreamRun:
    rid = None
    async for text, final in chunks:
        ids = tokenize(text)
        now = time.monotonic() - run.t0
        if run.mode == "append":
            run.final_ids.extend(ids)
        else:
            run.final_ids = list(ids)
        if rid is None:
            rid = await client.open_stream(
                mode=run.mode, sampling_params=sampling, input_ids=ids, final=final
            )
            ack = None
        else:
            ack = await client.send_chunk(rid, input_ids=ids, final=final)
        run.chunk_times.append(now)
        run.chunk_tokens.append(len(ids))
        run.cached_at_chunk.append(ack.cached_tokens if ack else 0)
        if ack:
            run.invalidated += ack.invalidated_tokens
        if final:
            run.retrieval_s = now
    assert rid is not None, "retrieval produced no chunk"
    run.result = await client.result(rid)
    return run


def _chunks(kind: str, question: str, index: Any, site: str, quick: bool) -> Any:
    from retrievers.stream import crawl_chunks, search_chunks

    if kind == "vector search":
        return search_chunks(index, question, k=3 if quick else 4, step_delay_s=0.4)
    return crawl_chunks([f"{site}/index.html"], question, max_pages=3 if quick else 6,
                        max_depth=2)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from eval.metrics import format_table
    from retrievers.site import serve_site
    from srt_ext.client import Client
    from srt_ext.engine.tiny_model import ensure_tiny_model
    from srt_ext.launch import launch_server

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    questions = QUESTIONS[: 1 if args.quick else args.questions]
    limit = 48 if args.quick else args.limit
    print("[1/4] index: loading or building over the corpus")
    index = load_or_build_index(args.corpus, limit)
    model = args.model_path or str(ensure_tiny_model())
    tok = AutoTokenizer.from_pretrained(model)
    tok.model_max_length = 1 << 30  # the server checks the model's context, not the tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    sampling = {"max_new_tokens": 8 if args.quick else args.max_new_tokens, "temperature": 0.0}
    print(f"[2/4] server: starting with {'the embedded tiny model' if not args.model_path else model}")
    rows, timeline, same = [], [], []
    with launch_server(model_path=args.model_path, max_total_tokens=args.max_total_tokens) as srv, \
            serve_site() as site:
        print(f"      {srv.url}; local site {site}")
        sync = Client(srv.url)
        print(f"[3/4] answering {len(questions)} question(s) with both retrievers")
        for qi, q in enumerate(questions):
            for kind, mode in (("vector search", "update"), ("crawl", "append")):
                sync.flush_cache()
                r = StreamRun(q, kind, mode, time.monotonic())
                asyncio.run(stream_one(srv.url, tokenize, _chunks(kind, q, index, site, args.quick),
                                       r, sampling))
                sync.flush_cache()  # the baseline pays its prefill, as it would have
                ns = sync.generate(input_ids=r.final_ids, sampling_params=sampling)
                s_ttft = r.result["meta_info"]["ttft_s"]
                n_ttft = ns["meta_info"]["ttft_s"]
                same.append(r.result["output_ids"] == ns["output_ids"])
                rows.append({
                    "question": f"Q{qi + 1}", "retriever": kind, "chunks": len(r.chunk_times),
                    "input_tokens": len(r.final_ids), "retrieval_s": r.retrieval_s,
                    "stream_ttft_query_s": r.retrieval_s + s_ttft, "stream_ttft_final_s": s_ttft,
                    "nostream_ttft_query_s": r.retrieval_s + n_ttft, "nostream_ttft_final_s": n_ttft,
                    "prefilled_before_final": r.cached_at_chunk[-1] if r.cached_at_chunk else 0,
                    "invalidated": r.invalidated, "same_output": same[-1],
                })
                label = f"Q{qi + 1} {kind}"
                timeline += [{"t": t, "kind": "chunk", "rid": label, "tokens": n}
                             for t, n in zip(r.chunk_times, r.chunk_tokens, strict=True)]
                timeline += [{"t": r.retrieval_s, "kind": "final", "rid": label, "tokens": 0},
                             {"t": r.retrieval_s + s_ttft, "kind": "first_token", "rid": label,
                              "tokens": 0},
                             {"t": r.retrieval_s, "kind": "final", "rid": label + " (no streaming)",
                              "tokens": 0},
                             {"t": r.retrieval_s + n_ttft, "kind": "first_token",
                              "rid": label + " (no streaming)", "tokens": 0}]
                print(f"      {label}: retrieval {r.retrieval_s:.2f}s, TTFT streaming "
                      f"{s_ttft * 1e3:.0f} ms vs non-streaming {n_ttft * 1e3:.0f} ms after the "
                      f"final chunk; answer: {r.result['text'][:60]!r}")
    print("[4/4] results")
    cols = list(rows[0])
    print(format_table(rows, cols))
    print(f"identical outputs streaming vs non-streaming: {sum(same)}/{len(same)}")
    if not args.model_path:
        print("(the embedded model has random weights, so its answers are noise: the demo is "
              "about when the first token comes; pass --model-path for a real checkpoint)")
    try:
        from eval.plots import plot_timeline

        png = out / "demo_timeline.png"
        plot_timeline(timeline, png)
        print(f"timeline: {png}")
    except ImportError:
        pass
    return 0 if all(same) else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the streaming RAG demo (CPU default model)")
    p.add_argument("--quick", action="store_true", help="one question, small index (seconds)")
    p.add_argument("--questions", type=int, default=3, help="how many built-in questions")
    p.add_argument("--model-path", help="a Llama-architecture HF checkpoint dir")
    p.add_argument("--corpus", help="a dir of .txt/.md files or a .jsonl (default: CPython help)")
    p.add_argument("--limit", type=int, default=160, help="passages to index (default 160)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--max-total-tokens", type=int, default=32768, help="KV pool size")
    p.add_argument("--out", default="out/demo", help="where the timeline PNG goes")
    p.set_defaults(func=run)
