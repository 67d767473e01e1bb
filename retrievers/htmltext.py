"""HTML -> prompt text, and URL normalisation for deduplication.

Only the words a reader sees belong in an LLM prompt: scripts, styles and
navigation chrome are noise that costs prefill time on every request, so they
are dropped. Links are collected *before* that, because navigation is exactly
where a crawler finds the rest of a site.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit, urlunsplit

from bs4 import BeautifulSoup

NOISE_TAGS = ("script", "style", "nav", "noscript", "template", "svg", "iframe", "form",
              "header", "footer", "aside")
BLOCK_TAGS = ("p", "div", "li", "pre", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
              "article", "blockquote", "dd", "dt", "table", "ul", "ol", "title")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str | None:
    """Canonical form used for "have we seen this URL": lower-case scheme and host,
    no default port, no fragment, "/" for an empty path. None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def html_to_text(html: str, base_url: str) -> tuple[str, str, list[str]]:
    """(title, visible text, absolute links) of an HTML document."""
    soup = BeautifulSoup(html, "html.parser")
    base_tag = soup.find("base", href=True)
    base = urljoin(base_url, str(base_tag["href"])) if base_tag else base_url
    links = []
    for a in soup.find_all("a", href=True):
        href = str(a["href"]).strip()
        if href and not href.startswith(("#", "mailto:", "javascript:", "tel:")):
            links.append(urljoin(base, href))
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(NOISE_TAGS):
        tag.decompose()
    if soup.title:
        soup.title.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_after("\n")
    raw = soup.get_text()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in raw.splitlines())
    text = "\n".join(line for line in lines if line)
    return title, text, links
