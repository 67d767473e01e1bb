"""Prefill/decode split: the prefill worker (single-server WorkerCore + hand-off)
with a decode server over ZMQ on loopback gives exactly the single worker's
tokens, for streamed (append and update) and one-shot requests, and frees KV
on both sides."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from srt_ext import messages as m
from srt_ext.disagg.decode import DecodeWorker
from srt_ext.disagg.prefill import PrefillWorkerCore
from srt_ext.engines.reference import ReferenceEngine
from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.worker.core import WorkerCore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def engines():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield [ReferenceEngine(TINY_MODEL, kv_capacity_tokens=512) for _ in range(3)]
    torch.set_num_threads(threads)


def requests(vocab: int) -> list[list[Any]]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, vocab, (90,), generator=g).tolist()
    sp = m.SamplingSpec(max_new_tokens=6, ignore_eos=True)
    return [
        [m.OpenStream(1, "app", "append", sp, ids[:20]), m.AddChunk(2, "app", ids[20:50]),
         m.AddChunk(3, "app", ids[50:70], final=True)],
        [m.OpenStream(4, "upd", "update", sp, ids[:40]), m.AddChunk(5, "upd", ids[:30] + ids[60:80]),
         m.AddChunk(6, "upd", ids[5:65], final=True)],
        [m.Generate(7, "one", ids[10:90], sp)],
        [m.Generate(8, "short", ids[:12], m.SamplingSpec(max_new_tokens=1))],
    ]  # fmt: skip


def run(core: WorkerCore, reqs: list[list]) -> dict[str, tuple[list[int], str]]:
    """Apply each request's messages with steps in between; tokens + finish reason."""
    toks: dict[str, list[int]] = {}
    done: dict[str, tuple[list[int], str]] = {}

    def absorb(events: list) -> None:
        for e in events:
            assert not isinstance(e, m.StreamError), e
            if isinstance(e, m.TokenEvent):
                toks.setdefault(e.rid, []).append(e.token)
            elif isinstance(e, m.FinishedEvent):
                done[e.rid] = (toks.pop(e.rid, []), e.reason)

    for msgs in reqs:
        for msg in msgs:
            reply, events = core.handle(msg)
            assert not isinstance(reply, m.ErrorReply), reply
            absorb(events)
            absorb(core.step()[1])
    deadline = time.monotonic() + 60
    while len(done) < len(reqs) and time.monotonic() < deadline:
        n, events = core.step() if core.has_work() else (0, [])
        absorb(events)
        if n == 0:
            time.sleep(0.005)
    return done


def test_split_matches_single_worker(engines):
    single, pre, dec = engines
    reqs = requests(single.vocab_size)
    expected = run(WorkerCore(single), reqs)
    assert len(expected) == 4 and all(len(t) == 6 for r, (t, _) in expected.items() if r != "short")
    worker = DecodeWorker(dec, "tcp://127.0.0.1:*")
    core = PrefillWorkerCore(pre, worker.endpoint, dead_after_s=30)
    try:
        got = run(core, reqs)
        assert got == expected
        assert core.handoffs == 3 and worker.stats["imported"] == 3
        assert core.stats()["kv_pinned_tokens"] == 0 and worker.health()["active"] == 0
        # handed-off prompts stay on the prefill side as prefix cache (not freed)
        assert core.stats()["kv_evictable_tokens"] >= 80  # at least the 80-token "one" prompt
        core.kv.check()
        worker.kv.check()
    finally:
        core.close()
        worker.close()


def test_dead_decode_server_fails_request(engines):
    _, pre, dec = engines
    worker = DecodeWorker(dec, "tcp://127.0.0.1:*")
    endpoint = worker.endpoint
    worker.close()  # the decode server is gone before the request arrives
    core = PrefillWorkerCore(pre, endpoint, ack_timeout_s=1.0, dead_after_s=1.0)
    try:
        ids = list(range(1000, 1030))
        core.handle(m.Generate(1, "lost", ids, m.SamplingSpec(max_new_tokens=4)))
        errors: list = []
        deadline = time.monotonic() + 20
        while not errors and time.monotonic() < deadline:
            errors = [e for e in core.step()[1] if isinstance(e, m.StreamError)]
            time.sleep(0.01)
        assert errors and errors[0].rid == "lost" and "did not ack" in errors[0].reason
        assert not core.has_work() and core.stats()["kv_pinned_tokens"] == 0
    finally:
        core.close()
