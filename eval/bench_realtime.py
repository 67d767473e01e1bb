"""`stream2llm bench-realtime`: TTFT after ``response.create`` on ``/v1/realtime``
vs a one-shot ``/generate`` of the same prompt.

Why: the Realtime endpoint's point is that passages a retriever finds are
prefilled while it is still searching, so the answer's first token comes after
only the question's prefill. Per question, the HNSW progressive search over the
shipped corpus (the demo's index) feeds each refined top-k into a Realtime
session with the ``openai`` SDK client (new passages: ``conversation.item.create``;
passages that left the top-k: ``conversation.item.delete``), then the question
item and ``response.create``; TTFT is the client's clock from sending
``response.create`` to the first ``response.output_text.delta``. The one-shot
pass flushes the cache and sends the same prompt ids (rendered by the server's
own ``realtime_prompt`` code) to ``/generate`` with ``stream: true``, timed
from sending to the first token. The cache is flushed before each pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from srt_ext.engines.sglang.realtime_prompt import Item, make_render, model_template, prompt_ids

INSTRUCTIONS = "Answer the question from the passages."


@dataclass
class Row:
    qid: str
    versions: int
    input_tokens: int
    cached_tokens: int
    ttft_realtime_s: float
    ttft_oneshot_s: float
    server_ttft_s: float  # the realtime stream's final chunk -> first token (server clock)
    same_text: bool


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("bench-realtime", help="TTFT: /v1/realtime streaming vs one-shot /generate")
    p.add_argument("--url", help="a running SGLang server with the stream2llm plugin (default: start one)")
    p.add_argument("--model-path", default="tiny-random", help="model for the server this starts")
    p.add_argument("--questions", type=int, default=6, help="first N questions of the demo set")
    p.add_argument("-k", type=int, default=3, help="passages per question")
    p.add_argument("--max-output-tokens", type=int, default=16)
    p.add_argument("--step-delay", type=float, default=0.05, help="simulated latency per search step (s)")
    p.add_argument("--json", help="write the rows here")
    p.set_defaults(func=run)


def flush(url: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.post(url + "/flush_cache", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit("/flush_cache kept refusing (requests still running?)")
        time.sleep(0.2)


def text_item(role: str, text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return item


async def realtime_pass(url: str, versions: list[Any], question: str, max_tokens: int,
                        step_delay: float) -> tuple[float, str, Any]:  # fmt: skip
    """Feed each top-k version as items, then ask; (TTFT, text, response.done)."""
    import openai

    from retrievers.progressive import doc_block

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench",
                                websocket_base_url=url.replace("http://", "ws://") + "/v1")  # fmt: skip
    async with client.realtime.connect(model="stream2llm") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": INSTRUCTIONS,
                                           "max_output_tokens": max_tokens})  # fmt: skip
        live: list[str] = []
        for v in versions:
            await asyncio.sleep(step_delay)  # the retriever's search time between versions
            want = [f"doc-{d.label}" for d in v.docs]
            for gone in [i for i in live if i not in want]:
                await conn.conversation.item.delete(item_id=gone)
            for item_id, d in zip(want, v.docs, strict=True):
                if item_id not in live:
                    await conn.conversation.item.create(item=text_item("user", doc_block(d), item_id))
            live = want
        await conn.conversation.item.create(item=text_item("user", question))
        t0, ttft, text = time.monotonic(), float("nan"), ""
        await conn.response.create()
        async for ev in conn:
            if ev.type == "error":
                raise SystemExit(f"realtime error: {ev.error.message}")
            if ev.type == "response.output_text.delta":
                ttft = ttft if text else time.monotonic() - t0
                text += ev.delta
            if ev.type == "response.done":
                return ttft, text, ev
    raise SystemExit("the connection closed before response.done")


def oneshot_pass(url: str, ids: list[int], max_tokens: int) -> tuple[float, str]:
    body = {"input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0.0}}  # fmt: skip
    t0, ttft, text = time.monotonic(), float("nan"), ""
    with httpx.stream("POST", url + "/generate", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            out = json.loads(line[6:])
            if out.get("output_ids") and ttft != ttft:
                ttft = time.monotonic() - t0
            text = out.get("text", text)
    return ttft, text


def prompt_of(model_dir: str, docs: list[Any], question: str) -> list[int]:
    """The prompt ids the session renders for these items (its own code)."""
    from transformers import AutoTokenizer

    from retrievers.progressive import doc_block
    from srt_ext.api.tokenizer import TokenizerRoom

    tok = TokenizerRoom(model_dir)
    render = make_render(model_template(model_dir, tok.chat_template), AutoTokenizer.from_pretrained(model_dir))
    items = [Item("i", "system", INSTRUCTIONS), *[Item(str(n), "user", doc_block(d)) for n, d in enumerate(docs)],
             Item("q", "user", question)]  # fmt: skip
    return prompt_ids(items, True, render, lambda t, first: tok.encode(t, first=first))


def run(args: argparse.Namespace) -> int:
    from eval.demo import DEMO_QUESTIONS, INDEX_LIMIT, load_or_build_index
    from eval.qa_data import load_questions
    from retrievers.progressive import progressive_search_sync
    from srt_ext.engines.reference.model_store import resolve_model
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    index = load_or_build_index(None, INDEX_LIMIT)
    qs = {q.id: q for q in load_questions()}
    questions = [qs[i] for i in DEMO_QUESTIONS if i in qs][: args.questions]
    model_dir = str(resolve_model(args.model_path))
    server = None
    if args.url is None:
        server = SGLangServer(SGLangServerConfig(model_path=model_dir, max_total_tokens=8192,
                                                 chunked_prefill_size=512, threads=2))  # fmt: skip
        server.start(progress=True)
    url = args.url or server.url
    rows: list[Row] = []
    try:
        for q in questions:
            versions = list(progressive_search_sync(index, q.question, k=args.k))
            flush(url)
            t_rt, text_rt, done = asyncio.run(realtime_pass(url, versions, q.question,
                                                            args.max_output_tokens, args.step_delay))  # fmt: skip
            ids = prompt_of(model_dir, list(versions[-1].docs), q.question)
            u = done.response.usage
            if u.input_tokens != len(ids):
                print(f"  {q.id}: prompt mismatch ({u.input_tokens} vs {len(ids)} tokens)")
            time.sleep(0.5)
            flush(url)
            t_one, text_one = oneshot_pass(url, ids, args.max_output_tokens)
            rows.append(Row(q.id, len(versions), u.input_tokens, u.input_token_details.cached_tokens,
                            t_rt, t_one, float(done.response.metadata.get("server_ttft_s") or "nan"),
                            text_rt == text_one))  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    return 0


def print_table(rows: list[Row]) -> None:
    print(f"{'question':>8} {'versions':>8} {'input':>6} {'cached':>6} {'TTFT realtime':>14} "
          f"{'TTFT one-shot':>14} {'speedup':>8} {'server':>9} {'same':>5}")  # fmt: skip
    for r in rows:
        print(f"{r.qid:>8} {r.versions:>8} {r.input_tokens:>6} {r.cached_tokens:>6} "
              f"{r.ttft_realtime_s * 1e3:>12.1f}ms {r.ttft_oneshot_s * 1e3:>12.1f}ms "
              f"{r.ttft_oneshot_s / r.ttft_realtime_s:>7.2f}x {r.server_ttft_s * 1e3:>7.1f}ms "
              f"{str(r.same_text):>5}")  # fmt: skip
    if rows:
        rt = statistics.median(r.ttft_realtime_s for r in rows)
        one = statistics.median(r.ttft_oneshot_s for r in rows)
        print(f"median TTFT: realtime {rt * 1e3:.1f} ms, one-shot {one * 1e3:.1f} ms ({one / rt:.2f}x)")
