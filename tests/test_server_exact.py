"""Exactness through the server: the same final token ids give the same greedy
tokens whether the input arrives in one piece, as append chunks of random sizes,
or as update versions with random LCPs, alone or concurrently; and a chunk that
lands while a step is running never makes a token appear before the final chunk."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from server_helpers import prompt, server, split, versions

from srt_ext.client import AsyncClient

pytestmark = pytest.mark.timeout(300)
SP = {"max_new_tokens": 5}
CASES = [(seed, n) for seed, n in ((11, 7), (12, 40), (13, 90), (14, 150))]


@pytest.fixture(scope="module")
def srv():
    with server(max_total_tokens=4096, token_budget=64, scheduler="fcfs") as h:
        yield h


@pytest.fixture(scope="module")
def c(srv):
    with srv.client() as client:
        yield client


@pytest.fixture(scope="module")
def ref(c):
    return {key: c.generate(input_ids=prompt(*key), sampling_params=SP)["output_ids"]
            for key in CASES}  # fmt: skip


@pytest.mark.parametrize("key", CASES)
def test_append_random_chunks_equal_one_shot(c, ref, key):
    ids = prompt(*key)
    rng = random.Random(key[0])
    for trial in range(2):
        parts = split(ids, rng)
        rid = c.open_stream(sampling_params=SP, input_ids=parts[0], final=len(parts) == 1)
        for i, part in enumerate(parts[1:], 1):
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.05)  # let some chunks be computed before the next
            c.send_chunk(rid, input_ids=part, final=i == len(parts) - 1)
        assert c.result(rid)["output_ids"] == ref[key], (trial, [len(p) for p in parts])


@pytest.mark.parametrize("key", CASES)
def test_update_versions_equal_one_shot(c, ref, key):
    ids = prompt(*key)
    rng = random.Random(100 + key[0])
    vs = versions(ids, rng, k=rng.randint(2, 4))
    rid = c.open_stream(mode="update", sampling_params=SP, input_ids=vs[0])
    for i, v in enumerate(vs[1:], 1):
        time.sleep(rng.random() * 0.05)
        ack = c.send_chunk(rid, input_ids=v, final=i == len(vs) - 1)
        assert ack.input_tokens == len(v) and ack.cached_tokens <= len(v)
    assert c.result(rid)["output_ids"] == ref[key]


def test_concurrent_mixed_streams_exact(srv, ref):
    async def one(ac: AsyncClient, key: tuple[int, int], mode: str, seed: int) -> list[int]:
        rng = random.Random(seed)
        ids = prompt(*key)
        pieces = split(ids, rng) if mode == "append" else versions(ids, rng)
        rid = await ac.open_stream(mode=mode, sampling_params=SP)
        for i, p in enumerate(pieces):
            await asyncio.sleep(rng.random() * 0.03)
            await ac.send_chunk(rid, input_ids=p, final=i == len(pieces) - 1)
        return (await ac.result(rid))["output_ids"]

    async def main() -> list[tuple[tuple[int, int], list[int]]]:
        async with AsyncClient(srv.url) as ac:
            jobs = [(CASES[i % len(CASES)], "append" if i % 2 else "update", i) for i in range(8)]
            outs = await asyncio.gather(*(one(ac, k, mo, s) for k, mo, s in jobs))
            return [(k, o) for (k, _, _), o in zip(jobs, outs, strict=True)]

    for key, out in asyncio.run(main()):
        assert out == ref[key], key


def test_chunk_during_step_never_gives_an_early_token(srv, c):
    """Post the final chunk while the first chunk's prefill is running: the first
    token must come from a step planned after the final chunk was applied, and the
    output must equal the one-shot output."""
    ids = prompt(21, 400)  # several 64-token steps of prefill
    want = c.generate(input_ids=ids, sampling_params=SP)["output_ids"]
    seen_early: list[dict] = []
    rid = c.open_stream(sampling_params=SP, input_ids=ids[:-1])

    def watch() -> None:  # SSE reader: nothing may appear before the final chunk
        with srv.client() as c2:
            for ev in c2.stream_result(rid):
                if ev["output_ids"] and not final_sent.is_set():
                    seen_early.append(ev)

    final_sent = threading.Event()
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.05)  # the prefill is now in its steps
    ack = c.send_chunk(rid, input_ids=ids[-1:], final=True)
    final_sent.set()
    assert ack.cached_tokens < len(ids)  # it really arrived mid-prefill
    out = c.result(rid)
    t.join(30)
    assert not seen_early and out["output_ids"] == want
    meta = out["meta_info"]
    assert meta["ttft_s"] > 0 and meta["worker_ttft_s"] > 0
    assert meta["ttft_from_open_s"] > meta["ttft_s"]
