"""bench-streams' stock-SGLang baseline: prefix caching a user can build without stream2llm.

Stock SGLang has no stream API, but its radix cache keeps the prefix of every
finished request. So a client can "pre-warm" a prompt while retrieval goes on:
each time a chunk arrives it sends the *cumulative* prompt so far as a one-token
``/generate`` (same greedy sampling, ``max_new_tokens: 1``), without waiting for
it (retrieval does not stop); when the final chunk arrives it sends the whole
prompt as a normal streamed ``/generate``. Its ``meta_info.cached_tokens`` is the
share computed before the final chunk, and TTFT runs from sending it to the first
token over SSE.

What it costs that streaming does not: every warm request re-walks and re-sends
the whole prompt so far, is admitted as a full request (a prefill *and* a sampled
token: a decode step's worth of waste), and its KV is only evictable cache once it
finishes, so under memory pressure the next warm request or the final one finds
it evicted and computes it again (``StreamRecord.prefill_computed_tokens``).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

from eval.bench_streams_work import StreamRecord, StreamSpec, WarmRequest, sleep_until
from srt_ext.client.rest import ServerError, parse_sse_line

ENGINE = "stock"


def warm_body(prompt: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """One-token ``/generate`` of the prompt so far (its KV stays in the radix cache)."""
    return {"text": prompt, "sampling_params": {**sampling, "max_new_tokens": 1}}


def final_body(prompt: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """The real request: the whole prompt, streamed, with the run's sampling."""
    return {"text": prompt, "sampling_params": dict(sampling), "stream": True}


def stock_requests(spec: StreamSpec, sampling: dict[str, Any]) -> list[dict[str, Any]]:
    """The request bodies of one stream in order: a warm request per non-final
    chunk (cumulative prompt), then the final request of the whole prompt."""
    prompts = spec.cumulative()
    return [warm_body(p, sampling) for p in prompts[:-1]] + [final_body(prompts[-1], sampling)]


def _raise_for(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise ServerError(r.status_code, r.text[:300])


async def _warm(http: httpx.AsyncClient, body: dict[str, Any], w: WarmRequest) -> None:
    t = time.perf_counter()
    try:
        r = await http.post("/generate", json=body)
        _raise_for(r)
        meta = r.json()["meta_info"]
        w.prompt_tokens, w.cached_tokens = int(meta["prompt_tokens"]), int(meta["cached_tokens"])
    except Exception as exc:  # noqa: BLE001  (recorded; the stream goes on as a client would)
        w.error = f"{type(exc).__name__}: {exc}"
    w.latency_s = time.perf_counter() - t


async def run_stock_stream(http: httpx.AsyncClient, spec: StreamSpec, t0: float, gap_s: float,
                           sampling: dict[str, Any]) -> StreamRecord:  # fmt: skip
    """One stream's requests at chunk i's time ``t0 + i * gap_s`` (the final one
    last); never raises: a failure is the record's ``error``."""
    rec = StreamRecord(spec.sid, ENGINE)
    bodies = stock_requests(spec, sampling)
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, body in enumerate(bodies[:-1]):
            await sleep_until(t0 + i * gap_s)
            w = WarmRequest(sent_s=time.perf_counter() - t0)
            rec.warm.append(w)
            rec.chunk_sent_s.append(w.sent_s)
            tasks.append(asyncio.create_task(_warm(http, body, w)))
        await sleep_until(t0 + (len(bodies) - 1) * gap_s)
        rec.final_sent_s = time.perf_counter() - t0
        rec.chunk_sent_s.append(rec.final_sent_s)
        last: dict[str, Any] | None = None
        async with http.stream("POST", "/generate", json=bodies[-1]) as r:
            if r.status_code >= 400:
                await r.aread()
                _raise_for(r)
            async for line in r.aiter_lines():
                obj = parse_sse_line(line)
                if obj is None:
                    continue
                got = obj.get("output_ids") or obj.get("meta_info", {}).get("completion_tokens")
                if got and math.isnan(rec.first_token_s):
                    rec.first_token_s = time.perf_counter() - t0
                last = obj
        if last is None:
            raise RuntimeError("the final /generate streamed no frame")
        meta = last["meta_info"]
        rec.input_tokens, rec.cached_tokens = int(meta["prompt_tokens"]), int(meta["cached_tokens"])
        rec.meta_cached_tokens = rec.cached_tokens
        rec.output_ids = list(last.get("output_ids") or [])
    except Exception as exc:  # noqa: BLE001  (recorded per stream, the run goes on)
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    rec.chunk_tokens = [w.prompt_tokens for w in rec.warm] + [rec.input_tokens]
    rec.chunk_cached = [w.cached_tokens for w in rec.warm] + [rec.cached_tokens]
    if rec.error is None:
        bad = [w.error for w in rec.warm if w.error]
        rec.error = f"warm request: {bad[0]}" if bad else None
    return rec
