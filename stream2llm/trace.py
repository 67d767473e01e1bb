"""Workload traces: what a retrieval client sends, chunk by chunk, with timings.

One JSONL line per query. Workload generators (eval/workloads), the retrievers
(which record real runs) and replay/simulation all speak this one format, so a
trace collected by the crawler replays exactly like a synthetic one.

    {"qid": "q0", "arrival_s": 0.0, "mode": "append", "max_new_tokens": 1,
     "chunks": [{"t_s": 0.31, "token_ids": [..]} | {"t_s": 0.31, "text": ".."},
                ..., {"t_s": 9.2, "text": "..", "final": true}]}

``t_s`` is the chunk's offset from the query's arrival. In append mode a chunk
extends the input; in update mode it *is* the whole new input. The last chunk
carries ``final: true`` (a non-streaming request is one final chunk).

A neutral module: it imports nothing from the project, so every room (retrievers
included, which must not depend on the scheduler) can read and write traces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

import orjson

Mode = Literal["append", "update"]
MODES: tuple[Mode, ...] = ("append", "update")


class TraceError(ValueError):
    """A trace line that does not follow the format above."""


@dataclass(frozen=True)
class Chunk:
    t_s: float
    token_ids: tuple[int, ...] | None = None
    text: str | None = None
    final: bool = False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"t_s": round(self.t_s, 6)}
        if self.token_ids is not None:
            out["token_ids"] = list(self.token_ids)
        if self.text is not None:
            out["text"] = self.text
        if self.final:
            out["final"] = True
        return out


@dataclass(frozen=True)
class Query:
    qid: str
    arrival_s: float
    mode: Mode
    chunks: tuple[Chunk, ...]
    max_new_tokens: int = 1
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def retrieval_s(self) -> float:
        """Time from arrival until the final chunk is sent."""
        return self.chunks[-1].t_s

    def final_token_ids(self) -> tuple[int, ...]:
        """The complete input (token-id traces only)."""
        if self.mode == "update":
            ids = self.chunks[-1].token_ids
            return tuple(ids or ())
        return tuple(t for c in self.chunks for t in (c.token_ids or ()))

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "qid": self.qid,
            "arrival_s": round(self.arrival_s, 6),
            "mode": self.mode,
            "max_new_tokens": self.max_new_tokens,
            "chunks": [c.to_json() for c in self.chunks],
        }
        if self.meta:
            out["meta"] = self.meta
        return out


def query_from_json(obj: object) -> Query:
    if not isinstance(obj, dict):
        raise TraceError("a trace line must be a JSON object")
    try:
        mode = obj["mode"]
        if mode not in MODES:
            raise TraceError(f"mode must be one of {MODES}, got {mode!r}")
        raw_chunks = obj["chunks"]
        if not isinstance(raw_chunks, list) or not raw_chunks:
            raise TraceError("chunks must be a non-empty list")
        chunks = []
        for i, c in enumerate(raw_chunks):
            ids = c.get("token_ids")
            text = c.get("text")
            if (ids is None) == (text is None):
                raise TraceError(f"chunk {i}: give exactly one of token_ids and text")
            chunks.append(
                Chunk(
                    t_s=float(c["t_s"]),
                    token_ids=tuple(int(t) for t in ids) if ids is not None else None,
                    text=str(text) if text is not None else None,
                    final=bool(c.get("final", False)),
                )
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise TraceError(f"malformed trace line: {exc!r}") from exc
    if any(b.t_s < a.t_s for a, b in pairwise(chunks)):
        raise TraceError("chunk times must not decrease")
    if not chunks[-1].final or any(c.final for c in chunks[:-1]):
        raise TraceError("exactly the last chunk must be final")
    return Query(
        qid=str(obj["qid"]),
        arrival_s=float(obj.get("arrival_s", 0.0)),
        mode=mode,
        chunks=tuple(chunks),
        max_new_tokens=int(obj.get("max_new_tokens", 1)),
        meta=dict(obj.get("meta", {})),
    )


def write_trace(path: str | Path, queries: Iterable[Query]) -> int:
    n = 0
    with open(path, "wb") as f:
        for q in queries:
            f.write(orjson.dumps(q.to_json()) + b"\n")
            n += 1
    return n


def read_trace(path: str | Path) -> Iterator[Query]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield query_from_json(orjson.loads(line))
            except (orjson.JSONDecodeError, TraceError) as exc:
                raise TraceError(f"{path}:{lineno}: {exc}") from exc
