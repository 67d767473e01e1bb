"""Many partial streams inside SGLang's own scheduler, and memory pressure there.

Against SGLang's real server (tiny model, 64-token prefill chunks):
- every partial stream is prefilled while its chunks arrive, several in one
  step, none sampled before its final chunk;
- when parked streams alone would overfill the KV pool, idle streams give way
  (recompute on the session's server, a real host swap on a second one) and
  every stream still completes with exactly the one-shot tokens (computed on a
  flushed cache), with nothing left pinned afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import pytest
from engine_servers import GREEDY, EngineServer
from sglang_helpers import shared_sglang_server

from srt_ext.client.rest import AsyncClient, Client

pytestmark = pytest.mark.timeout(600)
SP = {"max_new_tokens": 6, **GREEDY}


def _server(**overrides: Any) -> EngineServer:
    s = shared_sglang_server(**overrides)
    srv = EngineServer("sglang", s.url, s)
    srv.flush()
    return srv


def _ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(n)]


def _one_shot(srv: EngineServer, ids: list[int]) -> list[int]:
    srv.flush()
    with Client(srv.url) as c:
        return list(c.generate(input_ids=ids, sampling_params=SP)["output_ids"])


def _wait(srv: EngineServer, cond: Any, what: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = srv.stats()
        if cond(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {s}\n{srv.handle.log_tail(40)}")
        time.sleep(0.05)


async def _streams(url: str, prompts: list[list[int]], pieces: int,
                   between: Any = None) -> tuple[list[list[int]], list[int]]:  # fmt: skip
    """Send each prompt as ``pieces`` append chunks, all streams in lockstep; call
    ``between(i)`` after chunk round ``i``; returns outputs and, per stream, the tokens
    computed before its final chunk: the least of its final ack's ``cached_tokens``
    and its result's ``meta_info.cached_tokens`` (a preemption may come between)."""
    async with AsyncClient(url) as ac:
        cuts = [[len(p) * k // pieces for k in range(pieces + 1)] for p in prompts]
        rids = await asyncio.gather(*(ac.open_stream(sampling_params=SP, input_ids=p[: c[1]])
                                      for p, c in zip(prompts, cuts, strict=True)))  # fmt: skip
        if between:
            await asyncio.to_thread(between, 0)
        acks: list[Any] = []
        for k in range(1, pieces):
            acks = await asyncio.gather(*(ac.send_chunk(r, input_ids=p[c[k]: c[k + 1]],
                                                        final=k == pieces - 1)
                                          for r, p, c in zip(rids, prompts, cuts, strict=True)))  # fmt: skip
            if between and k < pieces - 1:
                await asyncio.to_thread(between, k)
        outs = await asyncio.gather(*(ac.result(r) for r in rids))
    found = [o["meta_info"]["cached_tokens"] for o in outs]  # what the final input found
    assert all(0 <= f <= a.input_tokens for f, a in zip(found, acks, strict=True))
    before = [min(a.cached_tokens, f) for a, f in zip(acks, found, strict=True)]
    return [list(o["output_ids"]) for o in outs], before


def test_every_partial_stream_is_prefilled_before_its_final_chunk() -> None:
    """Five streams' partial input is computed and pinned between chunks (SGLang's
    single chunked slot would serve one at a time), and the final chunks find it."""
    srv = _server()
    prompts = [_ids(100 + i, 120) for i in range(5)]
    steps_before = srv.stats()
    seen: list[dict[str, Any]] = []

    def settled(k: int) -> None:  # all 5 streams parked with their received input pinned
        want = sum(len(p) * (k + 1) // 3 for p in prompts)
        seen.append(_wait(srv, lambda s: s["streams_parked"] == 5 and s["kv_pinned_tokens"] >= want,
                          f"round {k}: not every partial stream was prefilled"))  # fmt: skip

    outs, cached = asyncio.run(_streams(srv.url, prompts, 3, settled))
    assert len(seen) == 2 and all(s["requests_running"] == 0 for s in seen)
    for p, c in zip(prompts, cached, strict=True):
        assert c >= len(p) * 2 // 3 - 1  # the first two chunks were computed already
    assert srv.wait_idle()["kv_pinned_tokens"] == 0
    assert srv.stats()["preemptions_recompute"] == steps_before["preemptions_recompute"]
    for p, out in zip(prompts, outs, strict=True):
        assert out == _one_shot(srv, p)


def _pressure(srv: EngineServer, n_streams: int, tokens: int) -> dict[str, Any]:
    """Parked streams alone hold more than the pool: no deadlock, exact outputs."""
    cap = srv.stats()["kv_capacity_tokens"]
    assert n_streams * tokens * 2 // 3 > cap  # what the streams have before their final chunk
    before = srv.stats()
    prompts = [_ids(200 + i, tokens) for i in range(n_streams)]

    def settled(k: int) -> None:
        _wait(srv, lambda s: s["requests_waiting"] == 0 and s["requests_running"] == 0,
              f"round {k}: the partial streams did not settle")  # fmt: skip

    outs, _ = asyncio.run(_streams(srv.url, prompts, 3, settled))
    after = srv.wait_idle()
    assert after["kv_pinned_tokens"] == 0 and after["streams_open"] == 0
    for p, out in zip(prompts, outs, strict=True):
        assert out == _one_shot(srv, p)
    return {k: after[k] - before[k] for k in after if isinstance(after[k], int)}


def test_parked_streams_give_way_by_recompute_without_deadlock() -> None:
    srv = _server()
    grew = _pressure(srv, 8, 900)
    print("recompute pressure:", grew)
    assert grew["preemptions_recompute"] > 0 and grew["preemptions_swap"] == 0


def test_parked_streams_swap_to_host_and_back_exactly() -> None:
    # with SGLang's overlap scheduling (a GPU's default; off on CPU): parking waits a step
    srv = _server(max_total_tokens=2048, env={"STREAM2LLM_PREEMPTION": "swap"},
                  overlap_schedule=True)
    grew = _pressure(srv, 6, 700)
    print("swap pressure:", grew)
    assert 0 < grew["preemptions_swap"] <= 6 * 3  # no ping-pong: at most once a chunk each
    assert grew["swap_in_tokens"] > 0 and grew["swap_out_tokens"] >= grew["swap_in_tokens"]


def test_stats_count_swaps_only_when_they_ran() -> None:
    """The session's server is set to recompute, and recompute is all it runs."""
    s = httpx.get(shared_sglang_server().url + "/v1/stats", timeout=30).json()
    assert s["preemptions_swap"] == 0 and s.get("swap_out_tokens", 0) == 0
