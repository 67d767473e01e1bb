"""The fixed costs of real serving, measured (`stream2llm profile` calls this).

Why: the forward-pass curves alone make a simulated streaming TTFT tend to zero
at low load, while a real request still pays HTTP, tokenization, scheduling and
the sampler. The terms (scheduler.cost_model.FixedCosts) are measured where
they are paid:

* engine side, in process: ``sampled_token_s`` = the same forward with and
  without a sampling row; ``step_s`` = ``WorkerCore.step()`` (the worker's own
  step) minus the ``engine.forward`` inside it;
* the real HTTP path, against a ``launch_server`` on this machine with the
  model just profiled: the client's clock and the worker's wall-clock stamps
  (``meta_info.worker_final_at`` / ``worker_first_token_at``, same machine, same
  clock) split each small request into HTTP-in (``chunk_s``), the worker, and
  HTTP-out (``request_s`` for a one-shot ``/generate``, ``result_s`` for a stream's
  result request after its final chunk); ``ack_s`` = a chunk's round trip minus its
  way in;
* ``tokenize_s_per_1k``: the API room's tokenizer on 250- and 4,000-word texts
  (the slope, so the per-call part stays in ``chunk_s``).

Every term is the median over ``repeats`` (the scheduler pays typical latency).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

WORDS = ("time year people way day man thing woman life child world school state family "
         "student group country problem hand part place case week company system").split()  # fmt: skip


def _median(fn: Callable[[], float], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(fn() for _ in range(max(1, repeats)))


def _text(n_words: int, salt: int = 0) -> str:
    return " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words))


def sampled_token_s(engine: Any, repeats: int, warmup: int, n: int = 64) -> tuple[float, int]:
    """(seconds of one LM-head tile + sampler, rows per tile) on this engine."""
    import torch

    from srt_ext.engines.reference.engine import ForwardItem

    slots = engine.allocator.alloc(n)
    if slots is None:
        raise RuntimeError("KV pool too small to profile sampling")
    ids = list(range(100, 100 + n))

    def once(sample: bool) -> float:
        item = ForwardItem("s", ids, 0, slots[:0], slots, sample=sample)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        t0 = time.perf_counter()
        engine.forward([item])
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        return time.perf_counter() - t0

    try:
        diffs = []
        for _ in range(warmup):
            once(True), once(False)
        for _ in range(max(3, repeats)):  # paired, so drift between the two cancels
            diffs.append(once(True) - once(False))
    finally:
        engine.allocator.free(slots)
    tile = int(engine.model.lm_tile_rows) if engine.exact else 1
    return max(0.0, statistics.median(diffs)), tile


def step_overhead_s(engine: Any, repeats: int, tokens: int = 32) -> float:
    """The worker's step (``WorkerCore.step``) minus the forward pass inside it."""
    from srt_ext import messages as m
    from srt_ext.worker.config import CoreConfig
    from srt_ext.worker.core import WorkerCore

    core = WorkerCore(engine, CoreConfig(token_budget=tokens))
    fwd: list[float] = []
    inner = engine.forward

    def timed_forward(items: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(items)
        fwd.append(time.perf_counter() - t0)
        return out

    engine.forward = timed_forward
    spec = m.SamplingSpec(max_new_tokens=1, ignore_eos=True)
    diffs = []
    try:
        for r in range(max(3, repeats) + 1):
            ids = [500 + (r * 31 + i) % 20000 for i in range(tokens)]  # no shared prefix
            reply, _ = core.handle(m.OpenStream(r + 1, f"p{r}", "append", spec, ids, True))
            if isinstance(reply, m.ErrorReply):
                raise RuntimeError(reply.reason)
            fwd.clear()
            t0 = time.perf_counter()
            while core.has_work():
                core.step()
            total = time.perf_counter() - t0
            if r:  # the first is a warm-up
                diffs.append((total - sum(fwd)) / max(1, len(fwd)))
            core.handle(m.FlushCache(1000 + r))
    finally:
        engine.forward = inner
    return max(0.0, statistics.median(diffs))


def tokenize_s_per_1k(model_path: Any, repeats: int) -> float:
    """Seconds per 1K tokens of the API room's tokenizer (slope between two sizes)."""
    from srt_ext.api.tokenizer import TokenizerRoom

    tok = TokenizerRoom(model_path)
    small, big = _text(250, 1), _text(4000, 2)
    n_small, n_big = len(tok.encode(small, True)), len(tok.encode(big, True))

    def t(text: str) -> Callable[[], float]:
        def once() -> float:
            t0 = time.perf_counter()
            tok.encode(text, first=True)
            return time.perf_counter() - t0

        return once

    ts, tb = _median(t(small), repeats, 1), _median(t(big), repeats, 1)
    return max(0.0, (tb - ts) / (n_big - n_small) * 1000.0)


def http_terms(model_path: str | None, threads: int, repeats: int) -> dict[str, float]:
    """chunk_s, ack_s, request_s and result_s on a real server started here (its own process,
    as `stream2llm serve`)."""
    from srt_ext.launch import launch_server

    with launch_server(model_path=model_path, max_total_tokens=4096, threads=threads,
                       subprocess=True) as h:  # fmt: skip
        return http_terms_at(h.url, repeats)


def http_terms_at(url: str, repeats: int) -> dict[str, float]:
    """chunk_s, ack_s, request_s and result_s against a running, idle server (tiny inputs; its
    prefix cache is flushed after each round), and ``tokenize_s_per_1k`` as the slope
    of the way in between a 12- and an 800-word request: what a long text costs
    before the worker has it (client JSON, HTTP body, the API room's parse and
    tokenizer), which the tokenizer alone, timed in process, under-counts."""
    from srt_ext.client.rest import Client

    sp = {"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True}
    ins: list[float] = []
    outs: list[float] = []  # one-shot: the /generate response
    results: list[float] = []  # streaming: the client's result request after the ack
    acks: list[float] = []
    per_1k: list[float] = []
    with Client(url) as c:
        for r in range(max(3, repeats) + 1):
            rid = c.open_stream("append", sp, text=_text(8, r))
            time.sleep(0.02)
            t0 = time.time()
            c.send_chunk(rid, text=_text(4, r + 1))  # a non-final chunk: its round trip
            rtt = time.time() - t0
            time.sleep(0.02)
            t0 = time.time()
            c.send_chunk(rid, text=_text(4, r + 2), final=True)
            res = c.result(rid)
            t1 = time.time()
            time.sleep(0.02)
            g0 = time.time()
            gen = c.generate(text=_text(12, r + 3), sampling_params=sp)
            g1 = time.time()
            time.sleep(0.02)
            b0 = time.time()
            big = c.generate(text=_text(800, r + 4), sampling_params=sp)["meta_info"]
            c.flush_cache()
            if r == 0:
                continue  # warm-up
            small = gen["meta_info"]
            extra = big["prompt_tokens"] - small["prompt_tokens"]
            per_1k.append(1000 * ((big["worker_final_at"] - b0) - (small["worker_final_at"] - g0))
                          / max(extra, 1))  # fmt: skip
            for (s0, s1), meta, way_out in (((t0, t1), res["meta_info"], results),
                                            ((g0, g1), gen["meta_info"], outs)):
                ins.append(meta["worker_final_at"] - s0)
                way_out.append(s1 - meta["worker_first_token_at"])
            acks.append(max(0.0, rtt - ins[-2]))
    med = statistics.median
    return {"chunk_s": max(0.0, med(ins)), "ack_s": med(acks), "request_s": max(0.0, med(outs)),
            "result_s": max(0.0, med(results)), "tokenize_s_per_1k": max(0.0, med(per_1k))}  # fmt: skip


def measure_fixed(engine: Any, args: Any) -> dict[str, Any]:
    """Every fixed term of the profile's ``"fixed"`` block, with its source."""
    rep = max(3, args.repeats)
    sampled, tile = sampled_token_s(engine, rep, args.warmup)
    fixed: dict[str, Any] = {
        "sampled_token_s": round(sampled, 7),
        "sample_tile": tile,
        "step_s": round(step_overhead_s(engine, rep), 7),
        "tokenize_s_per_1k": round(tokenize_s_per_1k(engine.model_path, rep), 7),
    }
    if not args.skip_http:
        threads = args.threads or 0
        fixed |= {k: round(v, 7) for k, v in http_terms(args.model_path, threads, rep).items()}
    where = f"measured by `stream2llm profile` on this machine ({engine.device})"
    fixed["source"] = {
        "sampled_token_s": f"{where}: forward with minus without a sampling row (one tile "
        f"of {tile} rows), median of {rep} pairs",
        "step_s": f"{where}: WorkerCore.step() minus engine.forward, median of {rep}",
        "tokenize_s_per_1k": f"{where}: the way in through a real HTTP server, 12 vs 800 "
        "words (body, JSON, tokenizer)" if not args.skip_http
        else f"{where}: the API room's tokenizer alone, 250 vs 4,000 words",
        "chunk_s": f"{where}: client send -> worker applied (worker_final_at), real HTTP "
        "server, tiny chunks and /generate" if not args.skip_http else "not measured (0)",
        "ack_s": f"{where}: chunk round trip minus its way in" if not args.skip_http
        else "not measured (0)",
        "request_s": f"{where}: worker first token (worker_first_token_at) -> client "
        "has the /generate response" if not args.skip_http else "not measured (0)",
        "result_s": f"{where}: worker first token -> a stream's client has its result "
        "(asked after the final chunk's reply)" if not args.skip_http
        else "not measured (request_s)",
    }
    return fixed
