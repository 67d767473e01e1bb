"""Prefill/decode disaggregation as a library: KV exported from engine A and
imported into engine B decodes to exactly A's greedy tokens; bad transfers are
rejected with clear errors; a dead or absent decode server fails requests
within a bounded time instead of hanging."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from radix_stream import StreamKVCache
from srt_ext.disagg import (
    DecodeUnavailable,
    KVReceiver,
    KVSender,
    StreamKV,
    TransferError,
    TransferRejected,
    export_stream,
)
from srt_ext.disagg.decode import DecodeWorker
from srt_ext.disagg.wire import decode, encode
from srt_ext.engines.reference import ForwardItem, ReferenceEngine
from srt_ext.engines.reference.drive import greedy_generate
from srt_ext.engines.reference.model_store import TINY_MODEL

pytestmark = pytest.mark.timeout(120)
LOOP = "tcp://127.0.0.1:*"


@pytest.fixture(scope="module")
def engines():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ReferenceEngine(TINY_MODEL, kv_capacity_tokens=256), ReferenceEngine(TINY_MODEL, kv_capacity_tokens=256)
    torch.set_num_threads(threads)


def ids_of(engine: ReferenceEngine, seed: int, n: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, engine.vocab_size, (n,), generator=gen).tolist()


def prefill(
    engine: ReferenceEngine, kv: StreamKVCache, rid: str, ids: list[int], chunks: list[int]
) -> int:
    """Stream ``ids`` into ``kv`` chunk by chunk; the token sampled after the last."""
    kv.open(rid)
    tok = None
    for n in chunks:
        start = kv.computed(rid)
        new = kv.reserve(rid, n)
        piece = ids[start : start + n]
        last = start + n == len(ids)
        (tok,) = engine.forward([ForwardItem(rid, piece, start, kv.slots(rid), new, last)])
        kv.commit(rid, piece)
    assert tok is not None
    return tok


def collect(events: queue.Queue, rid: str, timeout: float = 60.0) -> tuple[list[int], dict]:
    out: list[int] = []
    while True:
        ev = events.get(timeout=timeout)
        if ev.get("rid") != rid or ev["type"] in ("ack",):
            continue
        if ev["type"] != "tokens":
            return out, ev
        out.extend(ev["output_ids"])
        if ev["finished"]:
            return out, ev


def test_decode_on_b_matches_a(engines):
    a, b = engines
    kv_a = StreamKVCache(a.allocator, page_size=1)
    worker = DecodeWorker(b, LOOP)
    events: queue.Queue = queue.Queue()
    sender = KVSender(worker.endpoint, events.put, ack_timeout_s=30, dead_after_s=30)
    try:
        for i, (n, chunks) in enumerate([(70, [30, 40]), (41, [41])]):
            ids = ids_of(a, 10 + i, n)
            expected = greedy_generate(a, ids, 8)
            first = prefill(a, kv_a, f"r{i}", ids, chunks)
            skv = export_stream(
                a.pool, kv_a, f"r{i}", first, {"max_new_tokens": 8, "ignore_eos": True}
            )
            kv_a.close(f"r{i}", keep_cache=True)  # KV now lives in the CPU copy
            assert skv.n_tokens == n and skv.layers == a.arch.num_layers
            ack = sender.send(skv)
            assert ack["type"] == "ack"
            rest, last = collect(events, f"r{i}")
            assert "error" not in last
            assert [first, *rest] == expected
            assert last["finish_reason"]["type"] == "length"
        kv_a.check()
        worker.kv.check()
        assert worker.kv.stats().pinned == 0 and worker.health()["active"] == 0
        assert sender.in_flight() == []
    finally:
        sender.close()
        worker.close()


def test_bad_transfers_are_rejected(engines):
    a, _ = engines
    k = [torch.randn(4, 2, 8, dtype=torch.float64) for _ in range(2)]
    skv = StreamKV("x", [1, 2, 3, 4], 5, {}, k, [t.clone() for t in k])
    good = [bytes(f) for f in encode(skv)]
    back = decode(good)
    assert back.token_ids == [1, 2, 3, 4] and torch.equal(back.v[1], skv.v[1])
    with pytest.raises(TransferError, match="checksum"):
        bad = list(good)
        bad[3] = bytes([good[3][0] ^ 1]) + good[3][1:]
        decode(bad)
    with pytest.raises(TransferError, match="buffers"):
        decode(good[:-1])
    with pytest.raises(TransferError, match="bytes"):
        decode([*good[:2], good[2][:-8], *good[3:]])
    with pytest.raises(TransferError, match="magic"):
        decode([b"nope", *good[1:]])
    # a well-formed transfer the decode engine cannot hold: nacked with a reason
    worker = DecodeWorker(engines[1], LOOP)
    sender = KVSender(worker.endpoint, ack_timeout_s=30)
    try:
        with pytest.raises(TransferRejected, match="layers"):
            sender.send(skv)
    finally:
        sender.close()
        worker.close()


def test_absent_or_dead_decode_server_fails_fast():
    skv = StreamKV("y", [1], 2, {}, [torch.zeros(1, 1, 1)], [torch.zeros(1, 1, 1)])
    # nobody listening: bounded wait for the ack
    sender = KVSender("tcp://127.0.0.1:1", ack_timeout_s=0.5)
    try:
        with pytest.raises(DecodeUnavailable, match="did not ack"):
            sender.send(skv)
    finally:
        sender.close()
    # a server that acks, then dies mid-request: the request errors, it does not hang
    got = threading.Event()
    rx: list[KVReceiver] = []
    rx.append(KVReceiver(LOOP, on_transfer=lambda s: (rx[0].ack(s.rid), got.set())))
    events: queue.Queue = queue.Queue()
    sender = KVSender(rx[0].endpoint, events.put, ack_timeout_s=10, dead_after_s=1.0)
    try:
        assert sender.send(skv)["type"] == "ack"
        assert got.is_set()
        rx[0].close()
        _, ev = collect(events, "y", timeout=10)
        assert ev["type"] == "error" and "silent" in ev["error"]
        assert sender.in_flight() == []
    finally:
        sender.close()
