"""Async focused crawler: the append-mode retriever.

Every accepted page is yielded the moment it is parsed and scored, so the
caller can append it to a live LLM request while the crawl goes on. Politeness
and robustness are the crawler's job, not the caller's: robots.txt, a
concurrency limit per host, timeouts, bounded redirects, content-type
filtering, URL and content deduplication, and a relevance threshold. A bad page
(HTTP error, timeout, undecodable bytes) is counted in :class:`CrawlStats` and
skipped; it never ends the crawl.

One class over ~300 lines, kept whole: fetching, politeness and scoring share
the crawl's state (frontier, per-host limits, seen sets), and splitting them
would only pass that state around.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from retrievers.corpus import split_passages
from retrievers.htmltext import html_to_text, normalize_url
from retrievers.relevance import Scorer, make_scorer


@dataclass(frozen=True)
class Page:
    """An accepted page: final URL (after redirects), clean text, when it was ready
    (seconds from crawl start), link depth from its seed, relevance score."""

    url: str
    text: str
    t_s: float
    depth: int
    score: float
    title: str = ""


@dataclass
class CrawlStats:
    """What happened to every URL the crawler considered (for logs and tests)."""

    fetched: int = 0
    accepted: int = 0
    irrelevant: int = 0
    duplicate_url: int = 0
    duplicate_content: int = 0
    robots_blocked: int = 0
    bad_content_type: int = 0
    http_errors: int = 0
    timeouts: int = 0
    fetch_errors: int = 0
    bad_encoding: int = 0
    off_host: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)

    def skip(self, url: str, reason: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        self.skipped.append((url, reason))


@dataclass(frozen=True)
class CrawlConfig:
    per_host_concurrency: int = 4
    max_concurrency: int = 16
    timeout_s: float = 10.0  # whole fetch of one URL: redirects, headers and body
    max_redirects: int = 5
    max_bytes: int = 2_000_000
    max_chars: int = 8000  # page text kept for the prompt
    max_fetches: int | None = None  # default: 10 * max_pages + number of seeds
    respect_robots: bool = True
    same_host: bool = True  # only follow links to the seeds' hosts
    content_types: tuple[str, ...] = ("text/html", "text/plain")
    scorer: str | Scorer = "bm25"  # "bm25" | "embed" | callable(question, passages)
    min_score: float = 1.0  # BM25+ max over passages; use ~0.3 for "embed" (cosine)
    user_agent: str = "stream2llm-crawler/0.1"
    trust_env: bool = True  # honour HTTP(S)_PROXY / NO_PROXY


_DONE = object()


class _Robots(RobotFileParser):
    """RobotFileParser with the two flags it sets in ``__init__`` and reads in
    ``can_fetch`` declared (typeshed leaves them out)."""

    disallow_all: bool
    allow_all: bool


class _Crawl:
    def __init__(self, question: str, max_pages: int, max_depth: int, cfg: CrawlConfig,
                 stats: CrawlStats, client: httpx.AsyncClient) -> None:
        self.question, self.max_depth, self.cfg, self.st = question, max_depth, cfg, stats
        self.client = client
        self.max_fetches = cfg.max_fetches or 10 * max_pages
        self.scorer = make_scorer(cfg.scorer)
        self.seen_urls: set[str] = set()
        self.seen_hashes: set[str] = set()
        self.hosts: set[str] = set()
        self.host_sems: dict[str, asyncio.Semaphore] = {}
        self.all_sem = asyncio.Semaphore(cfg.max_concurrency)
        self.robots: dict[str, RobotFileParser | None] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self.results: asyncio.Queue[object] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.t0 = time.monotonic()

    def schedule(self, url: str, depth: int) -> None:
        norm = normalize_url(url)
        if norm is None:
            return
        if norm in self.seen_urls:
            self.st.skip(norm, "duplicate_url")
            return
        if self.cfg.same_host and self.hosts and urlsplit(norm).netloc not in self.hosts:
            self.st.skip(norm, "off_host")
            return
        if len(self.seen_urls) >= self.max_fetches:
            return
        self.seen_urls.add(norm)
        task = asyncio.create_task(self.visit(norm, depth))
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.results.put_nowait(_DONE)

    async def allowed(self, url: str) -> bool:
        if not self.cfg.respect_robots:
            return True
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        async with self.robots_locks.setdefault(origin, asyncio.Lock()):
            if origin not in self.robots:
                self.robots[origin] = await self._fetch_robots(origin)
        rp = self.robots[origin]
        return rp is None or rp.can_fetch(self.cfg.user_agent, url)

    async def _fetch_robots(self, origin: str) -> RobotFileParser | None:
        """robots.txt as RFC 9309 says: 4xx -> no rules, 401/403 -> keep out,
        unreachable -> no rules (we cannot tell, and the page fetch will fail anyway)."""
        try:
            resp = await asyncio.wait_for(self.client.get(f"{origin}/robots.txt"),
                                          self.cfg.timeout_s)
        except (TimeoutError, httpx.HTTPError):
            return None
        rp = _Robots(f"{origin}/robots.txt")
        if resp.status_code in (401, 403):
            rp.disallow_all = True
        elif resp.status_code >= 400:
            rp.allow_all = True
        else:
            rp.parse(resp.text.splitlines())
        return rp

    async def visit(self, url: str, depth: int) -> None:
        try:
            await self._visit(url, depth)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a crawler must outlive any one page
            self.st.skip(url, "fetch_errors")
            self.st.skipped[-1] = (url, f"fetch_errors: {exc!r}")

    async def _visit(self, url: str, depth: int) -> None:
        host = urlsplit(url).netloc
        sem = self.host_sems.setdefault(host, asyncio.Semaphore(self.cfg.per_host_concurrency))
        async with self.all_sem, sem:
            if not await self.allowed(url):
                self.st.skip(url, "robots_blocked")
                return
            try:
                got = await asyncio.wait_for(self.fetch(url), self.cfg.timeout_s)
            except (TimeoutError, httpx.TimeoutException):
                self.st.skip(url, "timeouts")
                return
            except httpx.HTTPError:
                self.st.skip(url, "fetch_errors")
                return
        if got is None:
            return
        final_url, ctype, text = got
        if ctype == "text/html":
            title, body, links = html_to_text(text, final_url)
        else:
            title, body, links = final_url.rsplit("/", 1)[-1], text.strip(), []
        digest = hashlib.sha256(" ".join(body.split()).encode()).hexdigest()
        if digest in self.seen_hashes:
            self.st.skip(final_url, "duplicate_content")
            return
        self.seen_hashes.add(digest)
        if depth < self.max_depth:
            for link in links:
                self.schedule(link, depth + 1)
        passages = [p.embed_text for p in split_passages(final_url, title, body)] or [title]
        score = float(await asyncio.to_thread(self.scorer, self.question, passages))
        if score < self.cfg.min_score:
            self.st.skip(final_url, "irrelevant")
            return
        if len(body) > self.cfg.max_chars:
            body = body[: self.cfg.max_chars].rsplit(None, 1)[0]
        page = Page(final_url, body, time.monotonic() - self.t0, depth, score, title)
        self.results.put_nowait(page)

    async def fetch(self, url: str) -> tuple[str, str, str] | None:
        """GET with redirects; None (and a stats entry) unless it is usable text."""
        async with self.client.stream("GET", url) as resp:
            self.st.fetched += 1
            final = normalize_url(str(resp.url)) or url
            if final != url:  # redirected: the target is a URL like any other
                if final in self.seen_urls:
                    self.st.skip(final, "duplicate_url")
                    return None
                self.seen_urls.add(final)
                if not await self.allowed(final):
                    self.st.skip(final, "robots_blocked")
                    return None
            if not resp.is_success:
                self.st.skip(url, "http_errors")
                return None
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in self.cfg.content_types:
                self.st.skip(url, "bad_content_type")
                return None
            body = bytearray()
            truncated = False
            async for part in resp.aiter_bytes():
                body += part
                if len(body) > self.cfg.max_bytes:
                    del body[self.cfg.max_bytes:]
                    truncated = True
                    break
            encoding = resp.charset_encoding or "utf-8"
        try:
            decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
            text = decoder.decode(bytes(body), final=not truncated)
        except (UnicodeDecodeError, LookupError):
            self.st.skip(url, "bad_encoding")
            return None
        return final, ctype, text

    async def run(self, seeds: Iterable[str], max_pages: int) -> AsyncIterator[Page]:
        seeds = list(seeds)
        if self.cfg.same_host:
            self.hosts = {urlsplit(n).netloc for s in seeds if (n := normalize_url(s))}
        for s in seeds:
            self.schedule(s, 0)
        if not self.tasks:
            return
        accepted = 0
        try:
            while accepted < max_pages:
                item = await self.results.get()
                if item is _DONE:
                    if not self.tasks:
                        break
                    continue
                assert isinstance(item, Page)
                accepted += 1
                self.st.accepted = accepted
                yield item
        finally:
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def make_client(cfg: CrawlConfig) -> httpx.AsyncClient:
    """The HTTP client a crawl uses unless one is passed in."""
    return httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=cfg.max_redirects,
        timeout=httpx.Timeout(cfg.timeout_s),
        headers={"User-Agent": cfg.user_agent},
        limits=httpx.Limits(max_connections=cfg.max_concurrency),
        trust_env=cfg.trust_env,
    )


async def crawl(
    seeds: Iterable[str],
    question: str,
    max_pages: int = 10,
    max_depth: int = 2,
    *,
    config: CrawlConfig | None = None,
    stats: CrawlStats | None = None,
    client: httpx.AsyncClient | None = None,
) -> AsyncGenerator[Page, None]:
    """Crawl from ``seeds`` (depth 0) and yield relevant pages as they are ready,
    at most ``max_pages``; pass ``stats`` to see what was skipped and why. Close
    early with ``contextlib.aclosing`` so pending fetches are cancelled at once."""
    cfg = config or CrawlConfig()
    st = stats if stats is not None else CrawlStats()
    own = client is None
    http = client or make_client(cfg)
    try:
        async for page in _Crawl(question, max_pages, max_depth, cfg, st, http).run(
            seeds, max_pages
        ):
            yield page
    finally:
        if own:
            await http.aclose()
