"""`stream2llm eval-quality`: are the streamed answers right, and what does waiting buy?

Every question of the question set (:mod:`eval.qa_data`) is answered through a real
stream2llm server with both retrievers:

* **search** (update mode): progressive HNSW search; each refined top-k is a new
  version of the whole input (``retrievers.stream.search_chunks``);
* **crawl** (append mode): the crawler over a local site that holds every corpus
  passage (:mod:`eval.quality_site`), seeded by a search engine's results; each
  accepted page extends the input (``retrievers.stream.crawl_chunks``).

Per question and retriever, on one server:

1. cache flushed; the chunks go to the server *as retrieval produces them* (the
   streamed answer);
2. the *partial-context* answers: the input the model would have had if it had been
   told to answer after chunk 1, 2, ... (append: the pages so far + the final question
   chunk; update: that version, which already ends with the question), sent one-shot
   with the prefix the stream left cached, as a stream2llm client answering early would;
3. cache flushed; the final input sent one-shot (the non-streaming answer), which must
   equal the streamed one token for token.

Scored: retrieval recall (a gold passage in the context), contains-gold and token F1
of the answer's first line (:mod:`eval.qa_metrics`), identical-output rate, and per
chunk index the accuracy and time to first token since the query started.

The server is SGLang's own with our plugin (`stream2llm eval-quality` starts it).
Every TTFT is the client's: from sending the request's last input (the final chunk,
or a one-shot ``/generate``) to its first output token on the event stream, the same
clock for streamed and one-shot answers (SGLang's ``/generate`` reports no TTFT).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from eval.qa_data import QAItem
from eval.qa_metrics import best_f1, contains_gold, first_line

RETRIEVERS = ("search", "crawl")
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Settings:
    """What a run holds fixed (written into the JSON so a number carries its setup)."""

    k: int = 3  # passages (search top-k) or pages (crawl) in the final context
    max_new_tokens: int = 24
    search_delay_s: float = 0.4  # per refinement step: a remote vector store's latency
    page_delay_s: float = 0.3  # per page: a web server's response time
    seeds: int = 4  # search results the crawl starts from
    shards: int = 2  # progressive search: shards answer in turn, then the exact scan
    curve: bool = True  # also answer after each non-final chunk


@dataclass
class Point:
    """The answer had the model answered after chunk ``chunk`` (1-based; the last point
    is the final input). ``t_chunk_s``: when that chunk was sent, from query start;
    ``ttft_s``: first token after the request was complete."""

    chunk: int
    passage_ids: list[str]
    answer: str
    correct: bool
    f1: float
    recall: bool
    t_chunk_s: float
    ttft_s: float

    @property
    def first_token_s(self) -> float:
        return self.t_chunk_s + self.ttft_s


@dataclass
class Record:
    """One question through one retriever."""

    qid: str
    retriever: str
    question: str
    answers: list[str]
    gold_passages: list[str]
    input_tokens: int
    retrieval_s: float
    stream_ttft_s: float
    oneshot_ttft_s: float
    same_output: bool
    stream_text: str
    points: list[Point] = field(default_factory=list)

    @property
    def final(self) -> Point:
        return self.points[-1]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for p, pd in zip(self.points, d["points"], strict=True):
            pd["first_token_s"] = p.first_token_s
        return d


@dataclass
class _Live:
    """What the streamed pass saw: per chunk its ids, send time and the context's
    passage ids after it; the result of the streamed request."""

    mode: str
    chunk_ids: list[list[int]] = field(default_factory=list)
    chunk_t: list[float] = field(default_factory=list)
    chunk_passages: list[list[str]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    ttft_s: float = float("nan")  # final chunk sent -> first token on the result's SSE

    @property
    def final_ids(self) -> list[int]:
        if self.mode == "update":
            return list(self.chunk_ids[-1])
        return [t for ids in self.chunk_ids for t in ids]

    def partial_inputs(self) -> list[tuple[list[int], float, list[str]]]:
        """(input ids, chunk time, passage ids) per curve point; the last is final.
        Append: the final chunk carries only the question, so point i is pages 1..i
        plus that chunk; a crawl that found no page has one point (no context)."""
        if self.mode == "update":
            return list(zip(self.chunk_ids, self.chunk_t, self.chunk_passages, strict=True))
        n_pages = len(self.chunk_ids) - 1
        question, t_final = self.chunk_ids[-1], self.chunk_t[-1]
        if n_pages == 0:
            return [(list(question), t_final, [])]
        out = []
        for i in range(1, n_pages + 1):
            ids = [t for c in self.chunk_ids[:i] for t in c] + list(question)
            out.append((ids, t_final if i == n_pages else self.chunk_t[i - 1],
                        self.chunk_passages[i - 1]))
        return out


class QualityRun:
    """Answers questions through one server at ``url`` (see the module docstring)."""

    def __init__(self, url: str, tokenize: Tokenize, settings: Settings, index: Any,
                 search: Any, site_paths: dict[str, str], layout: Any = None) -> None:  # fmt: skip
        from retrievers.prompt import PLAIN_LAYOUT
        from srt_ext.client.rest import Client

        self.layout = layout if layout is not None else PLAIN_LAYOUT  # retrievers/prompt.py
        self.url, self.tokenize, self.s = url, tokenize, settings
        self.index, self.search, self.paths = index, search, site_paths
        self.client = Client(url)
        self.sampling = {"max_new_tokens": settings.max_new_tokens, "temperature": 0.0}

    def close(self) -> None:
        self.client.close()

    # ---- the streamed pass ----------------------------------------------------------
    def _chunks(self, retriever: str, q: QAItem, live: _Live) -> Any:
        from eval.quality_site import passage_of
        from retrievers.crawler import CrawlConfig, Page
        from retrievers.progressive import Version
        from retrievers.stream import crawl_chunks, search_chunks

        if retriever == "search":
            def on_version(v: Version) -> None:
                live.chunk_passages.append(v.ids)

            return search_chunks(self.index, q.question, k=self.s.k, n_shards=self.s.shards,
                                 step_delay_s=self.s.search_delay_s, on_version=on_version,
                                 layout=self.layout)
        pages: list[str] = []

        def on_page(p: Page) -> None:
            pid = passage_of(p.url, self.paths)
            pages.append(pid or p.url)
            live.chunk_passages.append(list(pages))

        seeds = self.search.search(q.question, self.s.seeds)
        cfg = CrawlConfig(per_host_concurrency=1)  # pages in seed order: repeatable runs
        return crawl_chunks(seeds, q.question, max_pages=self.s.k, max_depth=1, config=cfg,
                            on_page=on_page, layout=self.layout)

    async def _stream(self, retriever: str, q: QAItem) -> _Live:
        from srt_ext.client.rest import AsyncClient

        live = _Live("update" if retriever == "search" else "append")
        t0 = time.monotonic()
        rid, reader, sent_final = None, None, float("nan")
        async with AsyncClient(self.url) as client:
            async for text, final in self._chunks(retriever, q, live):
                ids = self.tokenize(text)
                live.chunk_ids.append(ids)
                live.chunk_t.append(time.monotonic() - t0)
                if final:
                    sent_final = time.monotonic()
                if rid is None:
                    rid = await client.open_stream(mode=live.mode, sampling_params=self.sampling,
                                                   input_ids=ids, final=final)
                    reader = asyncio.create_task(_first_token_at(client, rid))
                else:
                    await client.send_chunk(rid, input_ids=ids, final=final)
            assert rid is not None and reader is not None, "retrieval produced no chunk"
            live.ttft_s = await reader - sent_final
            live.result = await client.result(rid)
        return live

    def _one_shot(self, ids: list[int]) -> tuple[dict[str, Any], float]:
        """One ``/generate`` of ``ids``: (its last event, send -> first token)."""
        t0, ttft, last = time.monotonic(), float("nan"), {}
        for ev in self.client.generate_stream(input_ids=ids, sampling_params=self.sampling):
            if ev.get("output_ids") and ttft != ttft:
                ttft = time.monotonic() - t0
            last = ev
        return last, ttft

    # ---- one question ---------------------------------------------------------------
    def _point(self, i: int, q: QAItem, text: str, pids: list[str], t: float,
               ttft: float) -> Point:  # fmt: skip
        ans = first_line(text)
        return Point(i, pids, ans, contains_gold(ans, q.answers), best_f1(ans, q.answers),
                     any(p in q.passage_ids for p in pids), t, ttft)

    def answer(self, retriever: str, q: QAItem) -> Record:
        if retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
        self.client.flush_cache()
        live = asyncio.run(self._stream(retriever, q))
        final_ids = live.final_ids
        points: list[Point] = []
        inputs = live.partial_inputs()  # the last one is the final input
        for i, (ids, t, pids) in enumerate(inputs, 1):
            if i < len(inputs) and not self.s.curve:
                continue
            if i == len(inputs) or ids == final_ids:  # e.g. an unchanged last version
                res, ttft = live.result, live.ttft_s
            else:  # the stream's KV is still cached: this is answering early, streamed
                res, ttft = self._one_shot(ids)
            points.append(self._point(i, q, res["text"], pids, t, ttft))
        self.client.flush_cache()  # the baseline pays its whole prefill, as it would have
        one, one_ttft = self._one_shot(final_ids)
        return Record(
            qid=q.id, retriever=retriever, question=q.question, answers=list(q.answers),
            gold_passages=list(q.passage_ids), input_tokens=len(final_ids),
            retrieval_s=live.chunk_t[-1], stream_ttft_s=live.ttft_s, oneshot_ttft_s=one_ttft,
            same_output=live.result["output_ids"] == one["output_ids"],
            stream_text=live.result["text"], points=points,
        )


async def _first_token_at(client: Any, rid: str) -> float:
    """When the first output token of stream ``rid`` arrived (monotonic clock)."""
    async for ev in client.stream_result(rid):
        if ev.get("output_ids"):
            return time.monotonic()
    return float("nan")


def records_from_json(rows: list[dict[str, Any]]) -> list[Record]:
    """Records back from :meth:`Record.to_json` output (re-rendering a saved run)."""
    out = []
    for row in rows:
        pts = [Point(**{k: v for k, v in p.items() if k != "first_token_s"})
               for p in row["points"]]
        out.append(Record(**{**row, "points": pts}))
    return out
