"""Preemption under a tiny KV pool (``max_total_tokens``) with many concurrent
streams: outputs stay exact (equal to an in-process one-shot reference), both
preemption kinds happen, and KV usage returns to the idle baseline (only
evictable cache: nothing pinned, nothing on the host, no stream open)."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from server_helpers import prompt, server, split, versions

from srt_ext.client.rest import AsyncClient
from srt_ext.engines.reference import ReferenceEngine
from srt_ext.engines.reference.drive import greedy_generate
from srt_ext.engines.reference.model_store import TINY_MODEL

pytestmark = pytest.mark.timeout(300)
NEW = 6
N_STREAMS = 8
KEYS = [(40 + i, 50 + 7 * i) for i in range(N_STREAMS)]  # 50..99-token prompts


@pytest.fixture(scope="module")
def reference() -> dict[tuple[int, int], list[int]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eng = ReferenceEngine(TINY_MODEL, kv_capacity_tokens=1024)
        return {k: greedy_generate(eng, prompt(*k), NEW) for k in KEYS}
    finally:
        torch.set_num_threads(threads)


async def run_streams(url: str, seed: int) -> list[tuple[tuple[int, int], list[int]]]:
    async def one(ac: AsyncClient, i: int) -> list[int]:
        rng = random.Random(seed * 100 + i)
        mode = "update" if i % 3 == 0 else "append"
        ids = prompt(*KEYS[i])
        pieces = versions(ids, rng) if mode == "update" else split(ids, rng)
        rid = await ac.open_stream(mode=mode, sampling_params={"max_new_tokens": NEW})
        for j, p in enumerate(pieces):
            await asyncio.sleep(rng.random() * 0.02)
            await ac.send_chunk(rid, input_ids=p, final=j == len(pieces) - 1)
        return (await ac.result(rid))["output_ids"]

    async with AsyncClient(url) as ac:
        outs = await asyncio.gather(*(one(ac, i) for i in range(N_STREAMS)))
    return list(zip(KEYS, outs, strict=True))


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_tiny_pool_many_streams_exact_and_kv_returns_to_idle(reference, preemption):
    # 8 streams of 50-99 input tokens + 6 outputs against a 256-token pool
    with server(max_total_tokens=256, token_budget=48, preemption=preemption,
                scheduler="fcfs") as h, h.client() as c:  # fmt: skip
        for round_ in range(2):
            for key, out in asyncio.run(run_streams(h.url, round_)):
                assert out == reference[key], (preemption, key)
            st = c.stats()
            assert st["streams_open"] == 0 and st["requests_running"] == 0
            assert st["kv_pinned_tokens"] == 0 and st["kv_host_tokens"] == 0
            assert st["kv_used_tokens"] == st["kv_evictable_tokens"]  # only reusable cache
        assert st["preemptions"][preemption] > 0, st
        other = "swap" if preemption == "recompute" else "recompute"
        assert st["preemptions"][other] == 0
