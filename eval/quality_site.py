"""The crawler's world for the quality eval: every corpus passage as a web page.

The demo site (:mod:`retrievers.site`) holds 21 passages, so most gold passages
of the question set are not on it. Here each of the corpus's passages is one page
(``/p/<doc>-<n>.html``) whose navigation links the previous and next part of the
same document, served on loopback with a per-page delay standing in for a web
server's response time (on loopback a crawl would otherwise take milliseconds and
there would be no retrieval to overlap with prefill).

A crawler-based RAG client does not start from a site's home page: it starts from
the pages a web search returned and follows links from there. :class:`SiteSearch`
plays the search engine (BM25 over the pages), giving the crawl its seed URLs;
the crawler then fetches, scores and accepts pages in arrival order, as it would
on the web. Recall is scored by mapping accepted URLs back to passage ids.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from rank_bm25 import BM25Okapi

from retrievers.corpus import Passage
from retrievers.relevance import terms
from retrievers.site import serve_directory


def page_path(passage_id: str) -> str:
    """URL path of a passage's page (ids look like ``compound#12``)."""
    return "/p/" + re.sub(r"[^A-Za-z0-9_.-]", "-", passage_id) + ".html"


def _page(p: Passage, links: Sequence[tuple[str, str]]) -> str:
    nav = "".join(f'<li><a href="{h}">{html.escape(t)}</a></li>' for h, t in links)
    paras = "".join(f"<p>{html.escape(x)}</p>" for x in p.text.split("\n\n"))
    return (f"<!doctype html><html><head><title>{html.escape(p.title)}</title></head><body>"
            f"<nav><ul>{nav}</ul></nav><main><h1>{html.escape(p.title)}</h1>{paras}</main>"
            "</body></html>")


def generate_corpus_site(root: str | Path, passages: Sequence[Passage]) -> dict[str, str]:
    """Write one page per passage under ``root``; returns URL path -> passage id."""
    root = Path(root)
    (root / "p").mkdir(parents=True, exist_ok=True)
    by_doc: dict[str, list[Passage]] = {}
    for p in passages:
        by_doc.setdefault(p.id.rsplit("#", 1)[0], []).append(p)
    paths: dict[str, str] = {}
    for parts in by_doc.values():
        for i, p in enumerate(parts):
            links = [(page_path(parts[j].id), f"{parts[j].title} (part {j + 1})")
                     for j in (i - 1, i + 1) if 0 <= j < len(parts)]
            path = page_path(p.id)
            if path in paths:
                raise ValueError(f"two passages map to page {path}: {paths[path]}, {p.id}")
            (root / path.lstrip("/")).write_text(_page(p, links), encoding="utf-8")
            paths[path] = p.id
    index = "".join(f'<li><a href="{h}">{html.escape(pid)}</a></li>' for h, pid in paths.items())
    (root / "index.html").write_text(
        f"<!doctype html><html><head><title>Corpus</title></head><body><nav><ul>{index}"
        "</ul></nav></body></html>", encoding="utf-8")
    return paths


class SiteSearch:
    """The search engine in front of the site: BM25 (Okapi, over the whole corpus, so
    IDF is meaningful) on title + text, returning page URLs best first."""

    def __init__(self, passages: Sequence[Passage], base_url: str) -> None:
        self.ids = [p.id for p in passages]
        self.base = base_url.rstrip("/")
        self.bm25 = BM25Okapi([terms(p.embed_text) or ["_"] for p in passages])

    def search(self, question: str, n: int) -> list[str]:
        scores = self.bm25.get_scores(terms(question))
        best = np.argsort(-scores, kind="stable")[:n]
        return [self.base + page_path(self.ids[i]) for i in best]


def passage_of(url: str, paths: dict[str, str]) -> str | None:
    """The passage id behind a crawled URL (None for pages that are not passages)."""
    return paths.get(urlsplit(url).path)


class _DelayedHandler(SimpleHTTPRequestHandler):
    delay_s = 0.0

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/p/") and self.delay_s > 0:
            time.sleep(self.delay_s)
        super().do_GET()


@contextmanager
def serve_corpus_site(root: str | Path, *, delay_s: float = 0.0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (ephemeral port) with ``delay_s`` per passage
    page; yields the base URL."""
    handler = type("CorpusHandler", (_DelayedHandler,), {"delay_s": delay_s})
    with serve_directory(root, handler, name="s2l-corpus-site") as url:
        yield url
