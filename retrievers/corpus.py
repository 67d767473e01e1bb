"""Passages to index: a corpus every machine has, plus user corpora.

The built-in corpus is CPython's own ``pydoc_data.topics`` (the language
reference help topics, ~80 documents of real English prose), so the demo and
the tests need no download. Documents are split into passages of a few hundred
tokens on paragraph boundaries: MiniLM reads at most 256 word pieces, and a
passage is also the unit a retriever puts in the prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

TARGET_WORDS = 180  # ~250 word pieces: fits MiniLM's 256-token window
MAX_WORDS = 260


@dataclass(frozen=True)
class Passage:
    """One retrievable unit. ``id`` is stable across runs (doc name + part number)."""

    id: str
    title: str
    text: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @property
    def embed_text(self) -> str:
        """What gets embedded: the title carries much of a short passage's meaning."""
        return f"{self.title}\n{self.text}"


def _paragraphs(text: str) -> list[str]:
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if p.strip()]


def _split_long(para: str, max_words: int) -> list[str]:
    words = para.split()
    if len(words) <= max_words:
        return [para]
    return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]


def split_passages(
    doc_id: str, title: str, text: str, *, target_words: int = TARGET_WORDS
) -> list[Passage]:
    """Greedy paragraph packing up to ``target_words`` per passage (never mid-paragraph
    unless a single paragraph is longer than ``MAX_WORDS``)."""
    parts: list[str] = []
    cur: list[str] = []
    n = 0
    for para in _paragraphs(text):
        for piece in _split_long(para, MAX_WORDS):
            w = len(piece.split())
            if cur and n + w > target_words:
                parts.append("\n\n".join(cur))
                cur, n = [], 0
            cur.append(piece)
            n += w
    if cur:
        parts.append("\n\n".join(cur))
    return [Passage(f"{doc_id}#{i}", title, p) for i, p in enumerate(parts)]


def _pydoc_title(name: str, text: str) -> str:
    # topics start with "Title\n*****" (reST heading); fall back to the key
    lines = text.lstrip().splitlines()
    if len(lines) >= 2 and set(lines[1].strip()) <= {"*", "=", "-", "~"} and lines[1].strip():
        return lines[0].strip()
    return name


def _strip_heading(text: str) -> str:
    lines = text.lstrip().splitlines()
    if len(lines) >= 2 and lines[1].strip() and set(lines[1].strip()) <= {"*", "=", "-", "~"}:
        return "\n".join(lines[2:])
    return text


def builtin_passages(*, limit: int | None = None) -> list[Passage]:
    """Passages of the CPython help topics, in a deterministic order."""
    from pydoc_data.topics import topics

    out: list[Passage] = []
    for name in sorted(topics):
        text = topics[name]
        out.extend(split_passages(name, _pydoc_title(name, text), _strip_heading(text)))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def _title_of_file(path: Path, text: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            return s.lstrip("#").strip() or path.stem
        if s:
            return s[:80] if path.suffix == ".md" else path.stem
    return path.stem


def _file_passages(path: Path, doc_id: str) -> list[Passage]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return split_passages(doc_id, _title_of_file(path, text), text)


def _jsonl_passages(path: Path) -> Iterator[Passage]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = str(obj["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: need a JSON object with 'text' ({exc})") from exc
            doc_id = str(obj.get("id", f"{path.stem}-{lineno}"))
            title = str(obj.get("title", doc_id))
            yield from split_passages(doc_id, title, text)


def load_corpus(source: str | Path | None = None, *, limit: int | None = None) -> list[Passage]:
    """Passages from ``source``: None -> built-in topics; a directory -> every .txt/.md
    file under it (one document each); a .jsonl file -> one document per line
    (``{"id"?, "title"?, "text"}``); a .txt/.md file -> that one document."""
    if source is None:
        return builtin_passages(limit=limit)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    passages: Iterable[Passage]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"no .txt or .md files under {path}")
        passages = (p for f in files for p in _file_passages(f, str(f.relative_to(path))))
    elif path.suffix == ".jsonl":
        passages = _jsonl_passages(path)
    elif path.suffix in (".txt", ".md"):
        passages = _file_passages(path, path.name)
    else:
        raise ValueError(f"corpus must be a directory, a .jsonl, .txt or .md file: {path}")
    out = []
    for p in passages:
        out.append(p)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"corpus {path} has no text")
    return out
