"""Retrieval -> stream chunks -> live requests and recorded traces.

A crawl is an *append*-mode stream: the first chunk is the layout's head
(system turn, start of the user turn, "Context:") + the first page, each later
page is one more chunk, and the final chunk is the question + the template's
closing tokens, sent when the crawl ends (the question goes last so that
everything before it can be prefilled while the crawl is still running). A
progressive search is an *update*-mode stream: each chunk is a whole new
version of the input, laid out the same way. ``layout`` (retrievers/prompt.py)
is the model's chat layout, or PLAIN_LAYOUT for a model without a template.

:func:`crawl_chunks` / :func:`search_chunks` give ``(text, final)`` pairs as
an async iterator: the REST client opens the request on the first pair,
appends/updates on each later one, and finishes on ``final``. The
``*_query`` functions consume the same iterators and stamp each chunk with its
offset from the start, giving a :class:`stream2llm.trace.Query` that replays in
``stream2llm sim`` / ``replay`` exactly as it happened.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from retrievers.crawler import CrawlStats, Page, crawl
from retrievers.progressive import Version, progressive_search
from retrievers.prompt import PLAIN_LAYOUT, PromptLayout
from stream2llm.trace import Chunk, Mode, Query

if TYPE_CHECKING:
    from retrievers.hnsw import HnswIndex

ChunkStream = AsyncGenerator[tuple[str, bool], None]


def page_block(page: Page, layout: PromptLayout = PLAIN_LAYOUT) -> str:
    """How one page appears in the prompt (source first: models cite it)."""
    head = f"[{page.title}] ({page.url})" if page.title else f"({page.url})"
    return layout.piece(f"{head}\n{page.text}")


async def pages_to_chunks(
    pages: AsyncIterator[Page], question: str, *, layout: PromptLayout = PLAIN_LAYOUT
) -> ChunkStream:
    """Append-mode chunk texts for any stream of pages (see module docstring).
    With no page at all, one final chunk carries head + question."""
    first = True
    async for page in pages:
        yield (layout.head if first else "") + page_block(page, layout), False
        first = False
    yield (layout.head if first else "") + layout.tail(question), True


async def crawl_chunks(
    seeds: Iterable[str],
    question: str,
    *,
    layout: PromptLayout = PLAIN_LAYOUT,
    on_page: Callable[[Page], object] | None = None,
    **crawl_kw: Any,
) -> ChunkStream:
    """Crawl and yield append chunks; ``on_page(page)`` sees each page (CLI printing,
    trace metadata); ``crawl_kw`` go to :func:`retrievers.crawler.crawl`."""

    async def pages() -> AsyncGenerator[Page, None]:
        async with aclosing(crawl(seeds, question, **crawl_kw)) as it:
            async for page in it:
                if on_page is not None:
                    on_page(page)
                yield page

    async with aclosing(pages()) as ps:
        async for item in pages_to_chunks(ps, question, layout=layout):
            yield item


async def versions_to_chunks(versions: AsyncIterator[Version]) -> ChunkStream:
    """Update-mode chunk texts: every version is the whole input."""
    async for v in versions:
        yield v.text, v.final


async def search_chunks(
    index: HnswIndex,
    question: str,
    *,
    on_version: Callable[[Version], object] | None = None,
    **search_kw: Any,
) -> ChunkStream:
    """Progressive search as update chunks; ``search_kw`` go to
    :func:`retrievers.progressive.progressive_search`."""
    async with aclosing(progressive_search(index, question, **search_kw)) as vs:
        async for v in vs:
            if on_version is not None:
                on_version(v)
            yield v.text, v.final


async def record(
    chunks: ChunkStream,
    qid: str,
    mode: Mode,
    *,
    arrival_s: float = 0.0,
    max_new_tokens: int = 1,
    meta: dict[str, object] | None = None,
) -> Query:
    """Consume a chunk stream, stamping each chunk with seconds since the call."""
    t0 = time.monotonic()
    out: list[Chunk] = []
    async with aclosing(chunks) as it:
        async for text, final in it:
            out.append(Chunk(t_s=time.monotonic() - t0, text=text, final=final))
    if not out or not out[-1].final:
        raise ValueError("a chunk stream must end with a final chunk")
    return Query(qid, arrival_s, mode, tuple(out), max_new_tokens, dict(meta or {}))


async def crawl_to_query(
    seeds: Iterable[str],
    question: str,
    *,
    qid: str = "crawl-0",
    arrival_s: float = 0.0,
    max_new_tokens: int = 64,
    stats: CrawlStats | None = None,
    on_page: Callable[[Page], object] | None = None,
    **crawl_kw: Any,
) -> Query:
    """Run a crawl and record it as an append-mode trace query."""
    pages: list[Page] = []
    st = stats if stats is not None else CrawlStats()

    def seen(page: Page) -> None:
        pages.append(page)
        if on_page is not None:
            on_page(page)

    chunks = crawl_chunks(seeds, question, on_page=seen, stats=st, **crawl_kw)
    q = await record(chunks, qid, "append", arrival_s=arrival_s, max_new_tokens=max_new_tokens)
    meta: dict[str, object] = {
        "retriever": "crawler", "question": question,
        "pages": [{"url": p.url, "t_s": round(p.t_s, 6), "depth": p.depth,
                   "score": round(p.score, 4)} for p in pages],
        "stats": {k: v for k, v in vars(st).items() if k != "skipped"},
    }
    return Query(q.qid, q.arrival_s, q.mode, q.chunks, q.max_new_tokens, meta)


async def search_to_query(
    index: HnswIndex,
    question: str,
    *,
    qid: str = "search-0",
    arrival_s: float = 0.0,
    max_new_tokens: int = 64,
    on_version: Callable[[Version], object] | None = None,
    **search_kw: Any,
) -> Query:
    """Run a progressive search and record it as an update-mode trace query."""
    versions: list[Version] = []

    def seen(v: Version) -> None:
        versions.append(v)
        if on_version is not None:
            on_version(v)

    chunks = search_chunks(index, question, on_version=seen, **search_kw)
    q = await record(chunks, qid, "update", arrival_s=arrival_s, max_new_tokens=max_new_tokens)
    meta: dict[str, object] = {
        "retriever": "hnsw", "question": question,
        "versions": [{"step": v.step, "ids": v.ids, "lcp_chars": v.lcp_chars,
                      "changed": v.changed} for v in versions],
    }
    return Query(q.qid, q.arrival_s, q.mode, q.chunks, q.max_new_tokens, meta)
