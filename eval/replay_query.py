"""Replaying one query against a live server, streaming or not (`stream2llm replay`).

:func:`replay_one` sends a query's chunks at their (scaled) times, or its whole final
input once retrieval has ended, and measures TTFT from the final input to the first
output token; :mod:`eval.replay` runs every query of a pass and pools the passes.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    qid: str
    ttft_s: float | None = None  # final input sent -> first token received
    ttft_from_arrival_s: float | None = None
    server_ttft_s: float | None = None
    done_at: float = 0.0
    invalidated: int = 0
    cached_tokens: int = 0  # input already computed when it became final (server's count)
    error: str | None = None
    output_ids: list[int] = field(default_factory=list)
    legs: dict[str, float] = field(default_factory=dict)  # see legs()


#: A TTFT's legs, in order, from the client's, API room's and worker's wall clocks
#: (one machine, one clock): client send -> API handler (HTTP in, body parsed) ->
#: tokenized and sent to the worker -> applied by the worker (ZMQ, and the wait for
#: the step in flight) -> first token sampled -> back in the API room -> client has it.
LEGS = ("http_in", "api", "to_worker", "worker", "from_worker", "out")


def legs(sent_wall: float, first_wall: float, meta: dict[str, Any]) -> dict[str, float]:
    """The measured TTFT split by :data:`LEGS`, plus ``tokens`` (the final request's
    own input tokens); {} when a stamp is missing (an older server, or the SGLang
    engine's frontend)."""
    keys = ("api_final_at", "api_sent_at", "worker_final_at", "worker_first_token_at",
            "api_first_token_at")
    if not all(isinstance(meta.get(k), (int, float)) for k in keys):
        return {}
    t = [sent_wall, *(float(meta[k]) for k in keys), first_wall]
    out = {name: b - a for name, a, b in zip(LEGS, t[:-1], t[1:], strict=True)}
    out["tokens"] = float(meta.get("api_final_tokens") or 0)  # the final request's own
    return out


def _cut(text: str, n: int) -> str:
    return "".join(re.findall(r"\s*\S+", text)[:n])


def _words(text: str | None) -> int:
    return len((text or "").split())


def fit_context(q: Any, max_words: int) -> Any:
    """``q`` with every input cut to ``max_words`` words (text traces), so a trace
    drawn for an 8B model's context fits a small model's: append keeps the chunks
    (and times) up to the budget, update cuts each version's tail."""
    from stream2llm.trace import Chunk, Query

    chunks, used = [], 0
    for c in q.chunks:
        if c.text is None:
            return q
        if q.mode == "update":
            chunks.append(Chunk(c.t_s, text=_cut(c.text, max_words), final=c.final))
            continue
        take = min(_words(c.text), max_words - used)
        if take <= 0:
            break
        chunks.append(Chunk(c.t_s, text=_cut(c.text, take), final=c.final))
        used += take
    if not chunks[-1].final:
        last = chunks[-1]
        chunks[-1] = Chunk(q.chunks[-1].t_s, text=last.text, final=True)
    return Query(q.qid, q.arrival_s, q.mode, tuple(chunks), q.max_new_tokens, dict(q.meta))


def whole_input(q: Any) -> dict[str, Any]:
    """The final input of a query as one request body part (text or ids)."""
    last = q.chunks if q.mode == "append" else q.chunks[-1:]
    if all(c.text is not None for c in last):
        return {"text": "".join(c.text for c in last)}
    return {"input_ids": [t for c in last for t in (c.token_ids or ())]}


def piece(c: Any) -> dict[str, Any]:
    return {"text": c.text} if c.text is not None else {"input_ids": list(c.token_ids or ())}


async def _first_token(client: Any, rid: str) -> tuple[float, dict[str, Any]]:
    """Wait for ``rid``'s first output token; (time it arrived, last SSE object)."""
    last: dict[str, Any] = {}
    first_t: float | None = None
    async for obj in client.stream_result(rid):
        if first_t is None and obj.get("output_ids"):
            first_t = time.perf_counter()
        last = obj
    if first_t is None:
        raise RuntimeError(f"{rid}: finished without output")
    return first_t, last


async def replay_one(client: Any, q: Any, streaming: bool, t0: float, scale: float,
                     sampling: dict[str, Any]) -> Outcome:  # fmt: skip
    out = Outcome(q.qid)
    arrival = t0 + q.arrival_s * scale

    async def until(t_s: float) -> None:
        await asyncio.sleep(max(0.0, arrival + t_s * scale - time.perf_counter()))

    if not streaming:
        await until(q.chunks[-1].t_s)
        sent, sent_w = time.perf_counter(), time.time()
        if sampling["max_new_tokens"] == 1:
            res = await client.generate(sampling_params=sampling, **whole_input(q))
            first, first_w = time.perf_counter(), time.time()
        else:
            rid = await client.open_stream("append", sampling, final=True, **whole_input(q))
            first, res = await _first_token(client, rid)
            first_w = time.time() - (time.perf_counter() - first)
    else:
        c0 = q.chunks[0]
        await until(c0.t_s)
        sent, sent_w = time.perf_counter(), time.time()
        rid = await client.open_stream(q.mode, sampling, final=c0.final, **piece(c0))
        for c in q.chunks[1:]:
            await until(c.t_s)
            sent, sent_w = time.perf_counter(), time.time()
            ack = await client.send_chunk(rid, final=c.final, **piece(c))
            out.invalidated += ack.invalidated_tokens
        if sampling["max_new_tokens"] == 1:
            res = await client.result(rid)
            first, first_w = time.perf_counter(), time.time()
        else:
            first, res = await _first_token(client, rid)
            first_w = time.time() - (time.perf_counter() - first)
    out.ttft_s, out.ttft_from_arrival_s = first - sent, first - arrival
    out.server_ttft_s = (res.get("meta_info") or {}).get("ttft_s")
    out.legs = legs(sent_w, first_w, res.get("meta_info") or {})
    out.cached_tokens = int((res.get("meta_info") or {}).get("cached_tokens") or 0)
    out.output_ids = list(res.get("output_ids") or [])
    out.done_at = time.perf_counter()
    return out
