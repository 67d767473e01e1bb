"""Faults and limits of a real server (issue 6): idle streams are reaped, a reader
that disconnects can abort its stream, per-request limits, concurrent chunks of
one stream are serialized, a killed worker is restarted, SIGTERM drains."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time

import httpx
import pytest
from server_helpers import prompt, server

from srt_ext.client.rest import AsyncClient, Client, ServerError
from srt_ext.launch import ServerHandle, _free_socket, _wait_healthy

pytestmark = pytest.mark.timeout(180)
SP = {"max_new_tokens": 4}


def wait_for(pred, timeout: float = 15.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def at_idle(c: Client) -> bool:
    st = c.stats()
    return (st["streams_open"] == 0 and st["kv_pinned_tokens"] == 0 and st["kv_host_tokens"] == 0
            and st["kv_used_tokens"] == st["kv_evictable_tokens"])  # fmt: skip


def test_idle_reaping_and_reader_disconnect_abort():
    with server(max_total_tokens=2048, stream_idle_timeout=0.8, reader_disconnect="abort") as h, \
            h.client() as c:  # fmt: skip
        idle = c.open_stream(sampling_params=SP, input_ids=prompt(1, 40))
        fed = c.open_stream(sampling_params=SP, input_ids=prompt(2, 10))
        for i in range(8):  # a stream that keeps receiving chunks is never reaped
            time.sleep(0.25)
            c.send_chunk(fed, input_ids=[1000 + i])
        with pytest.raises(ServerError) as e:
            c.result(idle)
        assert e.value.status == 410 and "no chunk" in e.value.reason
        c.send_chunk(fed, input_ids=[7], final=True)
        assert len(c.result(fed)["output_ids"]) == 4
        # policy "abort": the SSE reader of a long generation goes away -> aborted
        rid = c.open_stream(sampling_params={"max_new_tokens": 1500, "ignore_eos": True},
                            input_ids=prompt(3, 20), final=True)  # fmt: skip
        with httpx.stream("GET", f"{h.url}/v1/streams/{rid}/result", params={"stream": "true"}) as r:
            next(r.iter_lines())
        out = c.result(rid)
        assert out["meta_info"]["finish_reason"] == {"type": "abort"} and len(out["output_ids"]) < 1500
        assert wait_for(lambda: at_idle(c))
        text = httpx.get(h.url + "/metrics").text
        assert 'stream2llm_reaped_total{reason="idle"} 1.0' in text
        assert 'stream2llm_reaped_total{reason="disconnect"} 1.0' in text


def test_limits_and_flush_cache_needs_key():
    key = {"Authorization": "Bearer k"}
    with server(max_total_tokens=1024, max_input_tokens=50, max_streams_per_client=2,
                max_body_bytes=4000, api_key="k") as h, h.client() as c:  # fmt: skip
        assert httpx.post(h.url + "/flush_cache").status_code == 401
        assert httpx.post(h.url + "/flush_cache", headers=key).status_code == 200
        before = c.stats()
        for path, body in (("/v1/streams", {"input_ids": prompt(4, 51)}),
                           ("/generate", {"input_ids": prompt(4, 51)})):  # fmt: skip
            r = httpx.post(h.url + path, json=body, headers=key)
            assert r.status_code == 400 and "max-input-tokens" in r.json()["error"]
        a = c.open_stream(sampling_params=SP, input_ids=prompt(5, 30))
        with pytest.raises(ServerError) as e:
            c.send_chunk(a, input_ids=prompt(6, 21))  # 30 + 21 > 50
        assert e.value.status == 400
        b = c.open_stream(sampling_params=SP)
        with pytest.raises(ServerError) as e:
            c.open_stream(sampling_params=SP)
        assert e.value.status == 429 and "open streams" in e.value.reason
        big = b'{"input_ids": [' + b"1000," * 1000 + b"1000]}"
        assert httpx.post(h.url + "/generate", content=big, headers=key).status_code == 413
        chunked = httpx.post(h.url + "/generate", content=iter([big[:3000], big[3000:]]), headers=key)
        assert chunked.status_code == 413 and "body" in chunked.json()["error"]
        c.abort(a)
        c.abort(b)
        c.open_stream(sampling_params=SP, input_ids=[1000], final=True)  # a slot is free again
        assert wait_for(lambda: c.stats()["streams_open"] == 0)
        after = c.stats()
        assert after["kv_pinned_tokens"] == before["kv_pinned_tokens"] == 0
        assert 'stream2llm_rejected_total{status="429"} 1.0' in httpx.get(h.url + "/metrics",
                                                                          headers=key).text  # fmt: skip


def test_concurrent_chunks_of_one_stream_are_serialized():
    rng = random.Random(7)
    parts = [prompt(100 + i, rng.randint(1, 12)) for i in range(16)]

    async def go(url: str) -> tuple[list, list[int], dict]:
        async with AsyncClient(url) as ac:
            rid = await ac.open_stream(sampling_params=SP, input_ids=[1000])
            acks = await asyncio.gather(*(ac.send_chunk(rid, input_ids=p) for p in parts))
            await ac.send_chunk(rid, final=True)
            return acks, rid, await ac.result(rid)

    with server(max_total_tokens=2048) as h, h.client() as c:
        acks, rid, out = asyncio.run(go(h.url))
        order = sorted(range(len(parts)), key=lambda i: acks[i].input_tokens)
        ends = [acks[i].input_tokens for i in order]
        lens = [len(parts[i]) for i in order]
        assert ends == [1 + sum(lens[: k + 1]) for k in range(len(lens))]  # never interleaved
        final = [1000] + [t for i in order for t in parts[i]]
        assert out["meta_info"]["prompt_tokens"] == len(final)
        assert out["output_ids"] == c.generate(input_ids=final, sampling_params=SP)["output_ids"]
        # text chunks: the lock also keeps "is this the first chunk?" tokenization right
        words = [f" word{i}" for i in range(6)]
        seq = c.open_stream(sampling_params=SP)
        for w in words:
            c.send_chunk(seq, text=w)
        c.send_chunk(seq, final=True)
        rid = c.open_stream(sampling_params=SP)

        async def texts(url: str) -> None:
            async with AsyncClient(url) as ac:
                await asyncio.gather(*(ac.send_chunk(rid, text=w) for w in words))

        asyncio.run(texts(h.url))
        c.send_chunk(rid, final=True)
        n = c.result(seq)["meta_info"]["prompt_tokens"]
        assert c.result(rid)["meta_info"]["prompt_tokens"] == n


def test_killed_worker_is_restarted_and_health_recovers():
    with server(max_total_tokens=512, restart_backoff=0.2) as h, h.client() as c:
        svc = h._server.config.app.state.svc
        rid = c.open_stream(sampling_params=SP, input_ids=prompt(8, 20))
        svc.link.proc.kill()
        with pytest.raises(ServerError) as e:
            c.result(rid)
        assert e.value.status == 503
        assert wait_for(c.health, timeout=60, every=0.2), "worker not back"
        out = c.generate(input_ids=prompt(9, 20), sampling_params=SP)
        assert len(out["output_ids"]) == 4
        assert at_idle(c)
        assert "stream2llm_worker_restarts_total 1.0" in httpx.get(h.url + "/metrics").text


@pytest.fixture(scope="module", autouse=True)
def serve_proc():
    """A `stream2llm serve` child for the SIGTERM test, started when this module
    starts: its imports (~10-40 s on a busy machine) overlap the other tests."""
    with _free_socket("127.0.0.1") as sock:
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "reference",
            "--port", str(port), "--threads", "1",
            "--model-path", "tiny-random",
            "--max-total-tokens", "1024", "--shutdown-grace", "3", "--log-level", "warning"]
    h = ServerHandle(f"http://127.0.0.1:{port}", None, proc=subprocess.Popen(argv))
    yield h
    h.stop()


def test_sigterm_drains_then_exits_zero(serve_proc):
    h = serve_proc
    _wait_healthy(h, 300)
    with h.client() as c:
        busy = c.open_stream(sampling_params=SP, input_ids=prompt(10, 30))
        stuck = c.open_stream(sampling_params=SP, input_ids=prompt(11, 30))
        h._proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: not c.health(), timeout=10)
        with pytest.raises(ServerError) as e:  # new work is refused ...
            c.open_stream(sampling_params=SP)
        assert e.value.status == 503 and "shutting down" in e.value.reason
        c.send_chunk(busy, input_ids=[1000], final=True)  # ... in-flight work finishes
        assert len(c.result(busy)["output_ids"]) == 4
        assert _status(c, stuck) == 410  # still open when the grace period ended: aborted
    assert h._proc.wait(30) == 0


def _status(c: Client, rid: str) -> int:
    try:
        c.result(rid)
        return 200
    except ServerError as exc:
        return exc.status
