"""bench-streams' per-stream logic end to end on SGLang's server (tiny model).

Two streams with 0.2 s gaps against the session's shared SGLang server (with our
plugin): once over the stream API, as ``--engine sglang`` runs them, and once as
the stock baseline's client does (one-token ``/generate`` of the cumulative prompt
per chunk, then the whole prompt streamed; SGLang's ``/generate`` is the same
route on stock SGLang). The metrics must be what they claim: shares in [0, 1],
TTFT from the final chunk non-negative, and the stock builder must send the
prompt so far, never a lone chunk.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from sglang_helpers import shared_sglang_server

from eval.bench_streams import Case, parse_cases, run_streams, summarize
from eval.bench_streams_stock import stock_requests
from eval.bench_streams_work import build_specs
from retrievers.prompt import PLAIN_LAYOUT, tokenization_mismatch
from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.engines.reference.model_store import TINY_MODEL, resolve_model

pytestmark = pytest.mark.timeout(600)
SAMPLING = {"max_new_tokens": 4, "temperature": 0.0, "ignore_eos": True}
GAP_S = 0.2


def test_specs_are_seeded_and_tokenize_like_the_whole_prompt() -> None:
    room = TokenizerRoom(resolve_model(TINY_MODEL))
    a = build_specs(2, PLAIN_LAYOUT, chunks=3, words=(70, 100), seed=3)
    assert a == build_specs(2, PLAIN_LAYOUT, chunks=3, words=(70, 100), seed=3)
    assert a != build_specs(2, PLAIN_LAYOUT, chunks=3, words=(70, 100), seed=4)
    for spec in a:
        assert len(spec.chunks) == 4 and spec.chunks[0].startswith(PLAIN_LAYOUT.head)
        assert all(70 <= len(c.split()) <= 100 for c in spec.chunks[1:3])
        assert tokenization_mismatch(room.encode, list(spec.chunks)) is None
    assert parse_cases("6x16384, 10x3072") == [Case(6, 16384), Case(10, 3072)]


def test_stock_builder_sends_the_cumulative_prompt() -> None:
    spec = build_specs(1, PLAIN_LAYOUT, chunks=3, seed=0)[0]
    bodies = stock_requests(spec, SAMPLING)
    assert [b["text"] for b in bodies] == [
        "".join(spec.chunks[: i + 1]) for i in range(len(spec.chunks))
    ]
    assert bodies[-1]["text"] == spec.prompt and bodies[-1]["stream"] is True
    assert bodies[-1]["sampling_params"] == SAMPLING
    for b in bodies[:-1]:  # warm requests: same greedy params, one token, not streamed
        assert b["sampling_params"] == {**SAMPLING, "max_new_tokens": 1} and "stream" not in b


@pytest.mark.parametrize("engine", ["sglang", "stock"])
def test_two_streams_end_to_end(engine: str) -> None:
    server = shared_sglang_server()
    specs = build_specs(2, PLAIN_LAYOUT, chunks=3, words=(70, 100), seed=1)
    records, stats = asyncio.run(run_streams(engine, server.url, specs, GAP_S, SAMPLING, 120.0))
    assert [r.error for r in records] == [None, None]
    for r in records:
        assert r.input_tokens > 0 and 0.0 <= r.prefilled_share <= 1.0
        assert r.ttft_client_s >= 0.0 and math.isfinite(r.ttft_client_s)
        assert len(r.chunk_sent_s) == 4 and r.chunk_sent_s[-1] == r.final_sent_s
        assert r.chunk_sent_s[-1] - r.chunk_sent_s[0] >= 3 * GAP_S - 0.05  # the schedule held
        assert len(r.output_ids) == SAMPLING["max_new_tokens"]
        if engine == "sglang":
            assert r.ttft_server_s is not None and r.ttft_server_s >= 0.0
            assert r.meta_cached_tokens is not None and r.meta_cached_tokens <= r.input_tokens
        else:  # three warm requests of growing prompts; the last one's prefix is cached
            assert [w.error for w in r.warm] == [None] * 3
            assert [w.prompt_tokens for w in r.warm] == sorted(w.prompt_tokens for w in r.warm)
            assert r.cached_tokens > 0  # computed: at least the final's uncached part, at
            # most every prompt in full (a prefix shared with the other stream is cached)
            total = sum(w.prompt_tokens for w in r.warm) + r.input_tokens
            assert r.input_tokens - r.cached_tokens <= (r.prefill_computed_tokens or 0) <= total
    s = summarize(engine, Case(2, 4096), records, 1.0, stats)
    assert s.failed == 0 and 0.0 <= s.share["mean"] <= 1.0 and s.ttft_s["p50"] >= 0.0
    assert 0 <= s.got_prefill <= 2
