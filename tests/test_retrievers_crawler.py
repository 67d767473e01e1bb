"""Crawler retriever against a real local site over loopback HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest

from retrievers import site as S
from retrievers.crawler import CrawlConfig, CrawlStats, Page, crawl
from retrievers.htmltext import html_to_text, normalize_url
from retrievers.relevance import bm25_score
from retrievers.stream import crawl_to_query
from stream2llm.trace import read_trace, write_trace

Q = "How does the Python with statement work?"
SLOW_S = 1.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    smap = S.generate_site(root)
    with S.serve_site(root, slow_s=SLOW_S) as base:
        yield base, smap


def run(base, *, seeds=None, max_pages=100, max_depth=5, **cfg) -> tuple[list[Page], CrawlStats]:
    cfg.setdefault("timeout_s", 3.0)
    cfg.setdefault("min_score", 0.5)
    stats = CrawlStats()
    config = CrawlConfig(trust_env=False, **cfg)

    async def go():
        return [p async for p in crawl(seeds or [base + "/index.html"], Q, max_pages, max_depth,
                                       config=config, stats=stats)]

    return asyncio.run(go()), stats


def paths(pages, base):
    return {p.url[len(base):] for p in pages}


def test_full_crawl_handles_every_awkward_case(site):
    base, smap = site
    pages, st = run(base)
    got = paths(pages, base)
    assert set(smap.depth) <= got  # every content page of the tree
    assert {S.SLOW, S.MOVED, S.NOTES} <= got  # slow within timeout, redirect target, text/plain
    assert S.REDIRECT not in got and S.PRIVATE not in got and S.GARDEN not in got
    assert S.COPY not in got and S.DATA not in got and S.BAD_ENCODING not in got
    assert st.robots_blocked == 1 and st.http_errors == 1 and st.bad_content_type == 1
    assert st.duplicate_content == 1 and st.bad_encoding == 1 and st.irrelevant == 1
    assert st.fetch_errors == 1  # the redirect loop: bounded, skipped
    assert st.accepted == len(pages) == len(got)  # no page twice
    for p in pages:
        path = p.url[len(base):]
        assert p.depth == smap.depth.get(path, 1)
        assert "console.log" not in p.text and "font-family" not in p.text
        assert p.score >= 0.5
    assert all(a.t_s <= b.t_s for a, b in zip(pages, pages[1:], strict=False))
    assert pages[-1].url.endswith(S.SLOW)  # yielded when ready: the slow page comes last


def test_depth_limit(site):
    base, smap = site
    for d in (0, 1, 2):
        pages, _ = run(base, max_depth=d)
        assert pages and max(p.depth for p in pages) == d
        want = {k for k, v in smap.depth.items() if v <= d}
        assert want <= paths(pages, base)


def test_slow_page_times_out_without_stalling(site):
    base, _ = site
    t0 = time.monotonic()
    pages, st = run(base, timeout_s=0.3)
    assert S.SLOW not in paths(pages, base)
    assert st.timeouts == 1 and time.monotonic() - t0 < SLOW_S + 0.8
    assert len(pages) >= 15


def test_max_pages_stops_early(site):
    base, _ = site
    t0 = time.monotonic()
    pages, _ = run(base, max_pages=3)
    assert len(pages) == 3 and time.monotonic() - t0 < SLOW_S  # does not wait for slow.html


def test_robots_can_be_ignored_and_concurrency_one_works(site):
    base, _ = site
    pages, st = run(base, respect_robots=False, per_host_concurrency=1, max_depth=1)
    assert S.PRIVATE in paths(pages, base) and st.robots_blocked == 0


def test_same_host_and_bad_seeds(site):
    base, _ = site
    pages, st = run(base, seeds=["ftp://nowhere/", base + "/garden.html"])
    assert pages == [] and st.irrelevant == 1
    pages, st = run(base, seeds=["http://127.0.0.1:9/"], timeout_s=1.0)  # nothing listens
    assert pages == [] and st.fetch_errors + st.timeouts == 1


def test_crawl_trace_round_trip(site, tmp_path):
    base, _ = site
    cfg = CrawlConfig(trust_env=False, timeout_s=3.0, min_score=0.5)
    q = asyncio.run(crawl_to_query([base + "/"], Q, qid="c1", max_pages=4, max_depth=2,
                                   config=cfg))
    assert q.mode == "append" and len(q.chunks) == 5
    assert q.chunks[0].text.startswith("Answer the question") and "Context:" in q.chunks[0].text
    assert q.chunks[-1].final and q.chunks[-1].text == f"Question: {Q}\nAnswer:"
    assert [c.final for c in q.chunks[:-1]] == [False] * 4
    assert [p["url"] in q.chunks[i].text for i, p in enumerate(q.meta["pages"])] == [True] * 4
    write_trace(tmp_path / "c.jsonl", [q])
    (back,) = read_trace(tmp_path / "c.jsonl")
    assert [(c.text, c.final) for c in back.chunks] == [(c.text, c.final) for c in q.chunks]
    assert back.meta["retriever"] == "crawler"


def test_no_relevant_page_is_one_final_chunk(site):
    base, _ = site
    cfg = CrawlConfig(trust_env=False, min_score=0.5)
    q = asyncio.run(crawl_to_query([base + S.GARDEN], Q, config=cfg))
    assert len(q.chunks) == 1 and q.chunks[0].final and q.chunks[0].text.endswith("Answer:")


def test_html_to_text_and_normalize_url():
    title, text, links = html_to_text(
        "<html><head><title>T</title><script>x()</script><style>p{}</style></head><body>"
        "<nav><a href='/a'>A</a></nav><p>Hello <b>bold</b> world</p><a href='b#frag'>B</a>"
        "<a href='mailto:x@y'>m</a></body></html>", "http://h/dir/page.html")
    assert title == "T" and links == ["http://h/a", "http://h/dir/b#frag"]
    assert "Hello bold world" in text and "x()" not in text and "A" not in text.split()
    assert normalize_url("HTTP://Example.COM:80/a#x") == "http://example.com/a"
    assert normalize_url("https://e.com:8443") == "https://e.com:8443/"
    assert normalize_url("ftp://e.com/") is None and normalize_url("http://:bad") is None


def test_bm25_relevance():
    assert bm25_score(Q, ["The with statement wraps a block."]) > 1.0
    assert bm25_score(Q, ["Tomatoes need sun."]) == 0.0


def test_cli_crawl(tmp_path, capsys):
    from stream2llm.cli import main

    trace = tmp_path / "t.jsonl"
    assert main(["crawl", "--local-site", "--question", Q, "--max-pages", "3", "--min-score",
                 "0.5", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert out.count(" tokens  http://127.0.0.1:") == 3 and "trace:" in out
    assert len(next(read_trace(trace)).chunks) == 4
    assert main(["crawl", "--seed", "not a url", "--question", Q]) == 2
    assert main(["crawl", "--question", Q]) == 2
