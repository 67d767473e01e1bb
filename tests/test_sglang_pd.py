"""Streams through SGLang's own prefill/decode disaggregation, on CPU, with our ZMQ
KV transfer backend (``srt_ext/engines/sglang/disagg/``).

One pair per module (``PDPair``: a ``--disaggregation-mode decode`` and a
``--disaggregation-mode prefill`` SGLang server, tiny random model, 64-token
prefill chunks). A stream's chunks are prefilled and parked on the prefill server;
its final chunk moves the KV to the decode server, which decodes. Compared with
the one-shot output of the same pair (both servers get the request with its
bootstrap fields, as SGLang's router sends it) on a flushed cache, greedy.

The fault tests come last and kill the pair's servers (the prefill server is
started again in between).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest
from server_helpers import prompt, split, versions

from srt_ext.client.rest import AsyncClient, Client, ServerError
from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.engines.sglang.disagg.launch import PDConfig, PDPair
from srt_ext.engines.sglang.launch import SGLangServerConfig

pytestmark = pytest.mark.timeout(1500)
SP = {"max_new_tokens": 6, "temperature": 0.0}
CASES = [(31, 9), (32, 70), (33, 200)]


@pytest.fixture(scope="module")
def pd() -> Iterator[PDPair]:
    base = SGLangServerConfig(model_path=TINY_MODEL, max_total_tokens=4096, threads=1,
                              chunked_prefill_size=64, policy="ours", startup_timeout=900)  # fmt: skip
    pair = PDPair(PDConfig(server=base), log_dir=tempfile.mkdtemp(prefix="s2l-pd-"))
    pair.start(progress=bool(os.environ.get("STREAM2LLM_TEST_PROGRESS")))
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def c(pd: PDPair) -> Iterator[Client]:
    flush(pd.prefill.url)
    with Client(pd.prefill.url) as client:
        yield client


def flush(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.post(url + "/flush_cache", timeout=30.0).status_code != 200:
        assert time.monotonic() < deadline, f"{url} never became idle for /flush_cache"
        time.sleep(0.1)


def stats(url: str) -> dict:
    return httpx.get(url + "/v1/stats", timeout=30.0).json()


def wait_pinned(url: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while stats(url)["kv_pinned_tokens"] < n:
        assert time.monotonic() < deadline, f"partial prefill never reached {n}: {stats(url)}"
        time.sleep(0.05)


def pd_generate(pd: PDPair, ids: list[int] | None, sp: dict | None = None,
                text: str | None = None) -> list[int]:  # fmt: skip
    """One-shot through the pair: the same body, with bootstrap host/port/room, to
    both servers (what SGLang's router does in PD mode); the decode side answers."""
    body = {"sampling_params": sp or SP, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": pd.bootstrap_port, "bootstrap_room": random.getrandbits(62),
            **({"text": text} if text is not None else {"input_ids": ids})}  # fmt: skip
    with cf.ThreadPoolExecutor(2) as ex:
        fp = ex.submit(httpx.post, pd.prefill.url + "/generate", json=body, timeout=300)
        fd = ex.submit(httpx.post, pd.decode.url + "/generate", json=body, timeout=300)
        assert fp.result().status_code == 200, fp.result().text
        rd = fd.result()
    assert rd.status_code == 200, rd.text
    return rd.json()["output_ids"]


def one_shot(pd: PDPair, ids: list[int]) -> list[int]:
    flush(pd.prefill.url)
    return pd_generate(pd, ids)


def assert_no_leak(url: str, timeout: float = 60.0) -> None:
    """Nothing pinned or open, and after /flush_cache the whole pool free."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(url)
        if s["kv_pinned_tokens"] == 0 and s["streams_open"] == 0 \
                and s["requests_running"] == 0 and s["requests_waiting"] == 0:  # fmt: skip
            break
        assert time.monotonic() < deadline, f"{url} still holds streams or KV: {s}"
        time.sleep(0.2)
    flush(url)
    s = stats(url)
    assert s["kv_free_tokens"] == s["kv_capacity_tokens"], s


# ---- the transfer engine and the backend's registration (no servers) ---------------
def _engines():
    import torch

    from srt_ext.engines.sglang.disagg.zmq_engine import ZmqTransferEngine

    a, b = ZmqTransferEngine("127.0.0.1", timeout_s=5), ZmqTransferEngine("127.0.0.1", timeout_s=5)
    src = [torch.randint(0, 255, (768 * 100,), dtype=torch.uint8) for _ in range(2)]
    dst = [torch.zeros(768 * 120, dtype=torch.uint8) for _ in range(2)]
    a.batch_register([t.data_ptr() for t in src], [t.nbytes for t in src])
    b.batch_register([t.data_ptr() for t in dst], [t.nbytes for t in dst])
    return a, b, src, dst


@pytest.mark.parametrize("n", [3, 40])  # per-block path, gathered same-length path
def test_zmq_engine_writes_pages_into_registered_memory(n):
    a, b, src, dst = _engines()
    rng = random.Random(n)
    si, di = rng.sample(range(100), n), rng.sample(range(120), n)
    srcs = [src[k].data_ptr() + x * 768 for k in range(2) for x in si]
    dsts = [dst[k].data_ptr() + y * 768 for k in range(2) for y in di]
    assert a.batch_transfer_sync(b.session_id, srcs, dsts, [768] * len(srcs)) == 0
    for k in range(2):
        for x, y in zip(si, di, strict=True):
            assert src[k][x * 768 : (x + 1) * 768].equal(dst[k][y * 768 : (y + 1) * 768])
    untouched = sum(int(dst[k].view(120, 768)[y].any()) for k in range(2)
                    for y in set(range(120)) - set(di))  # fmt: skip
    assert untouched == 0
    assert b.bytes_received == a.bytes_sent == 2 * n * 768
    # unaligned destinations take the per-block path, still checked and exact
    assert a.batch_transfer_sync(b.session_id, srcs, [d + 5 for d in dsts], [768] * len(srcs)) == 0
    assert src[0][si[0] * 768 : (si[0] + 1) * 768].equal(
        dst[0][di[0] * 768 + 5 : (di[0] + 1) * 768 + 5]
    )


def test_zmq_engine_refuses_memory_nobody_registered():
    a, b, src, dst = _engines()
    end = dst[1].data_ptr() + dst[1].nbytes
    before = [t.clone() for t in dst]
    rc = a.batch_transfer_sync(b.session_id, [src[0].data_ptr()] * 10, [end] * 10, [768] * 10)
    assert rc < 0 and all(t.equal(u) for t, u in zip(dst, before, strict=True))
    rc = a.batch_transfer_sync(b.session_id, [src[0].data_ptr()], [end - 100], [768])  # runs past
    assert rc < 0 and all(t.equal(u) for t, u in zip(dst, before, strict=True))
    assert a.batch_transfer_sync(b.session_id, [12345], [dst[0].data_ptr()], [8]) < 0  # bad source
    assert a.send_probe(b.session_id) == 0


def test_zmq_engine_gives_up_on_a_silent_peer():
    from srt_ext.engines.sglang.disagg.launch import free_port
    from srt_ext.engines.sglang.disagg.zmq_engine import ZmqTransferEngine

    a = ZmqTransferEngine("127.0.0.1", timeout_s=0.5)
    t0 = time.monotonic()
    assert a.send_probe(f"127.0.0.1:{free_port()}") < 0
    assert time.monotonic() - t0 < 5


def test_backend_registers_as_an_sglang_transfer_backend():
    from sglang.srt.arg_groups.choices import DISAGG_TRANSFER_BACKEND_CHOICES
    from sglang.srt.disaggregation.base.conn import KVArgs
    from sglang.srt.disaggregation.mooncake.conn import MooncakeKVManager, MooncakeKVSender
    from sglang.srt.disaggregation.utils import KVClassType, TransferBackend, get_kv_class

    from srt_ext.engines.sglang.disagg import backend

    backend.register()
    backend.register()  # idempotent
    assert DISAGG_TRANSFER_BACKEND_CHOICES.count("zmq") == 1
    zmq = TransferBackend("zmq")
    around = backend.get_kv_class_around
    assert issubclass(around(get_kv_class, zmq, KVClassType.MANAGER), MooncakeKVManager)
    sender = around(get_kv_class, zmq, KVClassType.SENDER)
    assert issubclass(sender, MooncakeKVSender) and not sender.supports_host_tensor_indices
    assert around(get_kv_class, zmq, KVClassType.KVARGS) is KVArgs
    assert (
        around(get_kv_class, TransferBackend.FAKE, KVClassType.MANAGER).__name__ == "FakeKVManager"
    )


def test_room_of_is_stable_and_63_bits():
    from srt_ext.engines.sglang.disagg.streams import room_of

    assert room_of("abc") == room_of("abc") != room_of("abd")
    assert all(0 <= room_of(f"r{i}") < 2**63 for i in range(100))


# ---- exactness ----------------------------------------------------------------------
@pytest.mark.parametrize("key", CASES)
def test_append_stream_through_pd_equals_one_shot(pd, c, key):
    ids = prompt(*key)
    parts = split(ids, random.Random(key[0]), max_parts=4)
    rid = c.open_stream(sampling_params=SP, input_ids=parts[0], final=len(parts) == 1)
    cached = []
    if len(parts) > 1:
        wait_pinned(pd.prefill.url, len(parts[0]))  # prefilled and parked on the prefill side
        assert stats(pd.prefill.url)["streams_parked"] == 1
    for i, part in enumerate(parts[1:], 1):
        cached.append(c.send_chunk(rid, input_ids=part, final=i == len(parts) - 1).cached_tokens)
    out = c.result(rid)
    if cached:
        assert cached[0] == len(parts[0])  # the first chunk's KV was there before the rest
    assert len(out["output_ids"]) == SP["max_new_tokens"]  # decoded past the first token
    assert out["output_ids"] == one_shot(pd, ids), [len(p) for p in parts]


def test_update_stream_through_pd_equals_one_shot(pd, c):
    ids = prompt(34, 180)
    rng = random.Random(34)
    vs = versions(ids, rng, k=3)
    rid = c.open_stream(mode="update", sampling_params=SP, input_ids=vs[0])
    wait_pinned(pd.prefill.url, len(vs[0]))
    for i, v in enumerate(vs[1:], 1):
        ack = c.send_chunk(rid, input_ids=v, final=i == len(vs) - 1)
        assert ack.input_tokens == len(v)
        if i == 1:  # cut at the LCP on the prefill server
            lcp = next((j for j, (a, b) in enumerate(zip(vs[0], v, strict=False)) if a != b),
                       min(len(vs[0]), len(v)))  # fmt: skip
            assert ack.cached_tokens == lcp and ack.invalidated_tokens == len(vs[0]) - lcp
            wait_pinned(pd.prefill.url, len(v))
    out = c.result(rid)["output_ids"]
    assert out == one_shot(pd, ids)


def test_concurrent_streams_through_pd_exact(pd, c):
    keys = [(41, 30), (42, 120), (43, 90), (44, 160)]

    async def one(ac: AsyncClient, key: tuple[int, int], mode: str) -> list[int]:
        rng = random.Random(key[0])
        ids = prompt(*key)
        pieces = split(ids, rng, max_parts=3) if mode == "append" else versions(ids, rng, k=2)
        rid = await ac.open_stream(mode=mode, sampling_params=SP)
        for i, p in enumerate(pieces):
            await asyncio.sleep(rng.random() * 0.2)
            await ac.send_chunk(rid, input_ids=p, final=i == len(pieces) - 1)
        return (await ac.result(rid))["output_ids"]

    async def main() -> list[list[int]]:
        async with AsyncClient(pd.prefill.url) as ac:
            return await asyncio.gather(*(one(ac, k, "append" if i % 2 else "update")
                                          for i, k in enumerate(keys)))  # fmt: skip

    got = asyncio.run(main())
    for key, out in zip(keys, got, strict=True):
        assert out == one_shot(pd, prompt(*key)), key


def test_text_stream_through_pd(pd, c):
    """Text chunks (re-tokenized on the prefill side) reach the decode side as the
    whole text's ids: the output equals the one-shot output of those ids."""
    text = "The quick brown fox jumps over the lazy dog. " * 6
    rid = c.open_stream(sampling_params=SP, text=text[:50])
    c.send_chunk(rid, text=text[50:130])
    c.send_chunk(rid, text=text[130:], final=True)
    out = c.result(rid)
    flush(pd.prefill.url)
    assert out["output_ids"] == pd_generate(pd, None, text=text)
    assert out["meta_info"]["ttft_s"] is not None


def test_bad_input_is_a_json_4xx(pd, c):
    r = httpx.post(pd.prefill.url + "/v1/streams/nope/chunks", json={"input_ids": [5]}, timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(pd.prefill.url + "/v1/streams", json={"input_ids": [5], "mode": "sideways"},
                   timeout=30)  # fmt: skip
    assert 400 <= r.status_code < 500 and "error" in r.json()
    rid = c.open_stream(sampling_params=SP, input_ids=prompt(45, 20))
    c.send_chunk(rid, input_ids=[7], final=True)
    c.result(rid)
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=[8])
    assert 400 <= e.value.status < 500


def test_abort_while_decoding_ends_it_on_both_sides(pd, c):
    """A stream aborted after its final chunk, while the decode server decodes it:
    its result is an error, and the decode server stops that request."""
    long_sp = {"max_new_tokens": 2000, "temperature": 0.0, "ignore_eos": True}
    rid = c.open_stream(sampling_params=long_sp, input_ids=prompt(46, 30), final=True)
    deadline = time.monotonic() + 60
    while stats(pd.decode.url)["requests_running"] == 0:
        assert time.monotonic() < deadline, stats(pd.decode.url)
        time.sleep(0.05)
    c.abort(rid)  # the prefill side is done with it (its KV went to the decode server)
    with pytest.raises(ServerError) as e:
        c.result(rid)
    assert 400 <= e.value.status < 500
    deadline = time.monotonic() + 60
    while stats(pd.decode.url)["requests_running"]:
        assert time.monotonic() < deadline, "the decode server kept decoding an aborted stream"
        time.sleep(0.1)


def test_no_kv_left_on_either_side(pd, c):
    assert_no_leak(pd.prefill.url)
    assert_no_leak(pd.decode.url)


# ---- faults (these kill the pair's servers; keep them last) -----------------------
def _kill(server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)


def test_prefill_killed_between_chunks(pd, c):
    """A stream waits between two chunks when its prefill server dies: its next chunk
    fails to connect (the client sees the error), a stream already handed to the
    decode server ends there too, and the decode server keeps no KV."""
    ids = prompt(51, 150)
    rid = c.open_stream(sampling_params=SP, input_ids=ids[:100])
    wait_pinned(pd.prefill.url, 100)
    long_sp = {"max_new_tokens": 400, "temperature": 0.0, "ignore_eos": True}
    other = c.open_stream(sampling_params=long_sp, input_ids=prompt(52, 40), final=True)
    deadline = time.monotonic() + 60
    while stats(pd.decode.url)["requests_running"] == 0:  # the other one decodes now
        assert time.monotonic() < deadline, stats(pd.decode.url)
        time.sleep(0.05)
    _kill(pd.prefill)
    with pytest.raises(httpx.TransportError):
        c.send_chunk(rid, input_ids=ids[100:], final=True)
    with pytest.raises(httpx.TransportError):
        c.result(other)
    assert pd.decode.alive()
    assert_no_leak(pd.decode.url, timeout=120)  # the decode side finished or dropped it
    pd.restart("prefill")  # the next test needs one
    assert pd_generate(pd, prompt(53, 30))  # the pair serves again


def test_decode_killed_mid_stream(pd, c):
    """The decode server dies while two streams are open on the prefill server: the
    one whose final chunk comes next gets 502 with a JSON reason, the other goes on
    (chunks applied, KV reused), and the prefill server keeps no KV."""
    with Client(pd.prefill.url) as c:
        a_ids, b_ids = prompt(61, 120), prompt(62, 120)
        a = c.open_stream(sampling_params=SP, input_ids=a_ids[:80])
        b = c.open_stream(sampling_params=SP, input_ids=b_ids[:80])
        wait_pinned(pd.prefill.url, 160)
        _kill(pd.decode)
        c.send_chunk(a, input_ids=a_ids[80:], final=True)
        with pytest.raises(ServerError) as e:
            c.result(a)
        assert e.value.status == 502 and "decode server" in e.value.reason
        ack = c.send_chunk(b, input_ids=b_ids[80:100])  # the other stream goes on
        assert ack.cached_tokens == 80 and ack.input_tokens == 100
        wait_pinned(pd.prefill.url, 100)
        c.abort(b)
        assert_no_leak(pd.prefill.url, timeout=120)
