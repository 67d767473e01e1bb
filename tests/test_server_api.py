"""Every endpoint of a real server (uvicorn on loopback, worker process, tiny model)."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from server_helpers import prompt, server

from srt_ext.client.rest import Client, ServerError

pytestmark = pytest.mark.timeout(300)
SP = {"max_new_tokens": 4}


@pytest.fixture(scope="module")
def srv():
    with server(max_total_tokens=2048) as h:
        yield h


@pytest.fixture(scope="module")
def c(srv):
    with srv.client() as client:
        yield client


def idle_stats(c: Client) -> dict:
    st = c.stats()
    assert st["streams_open"] == 0 and st["kv_pinned_tokens"] == 0
    return st


def test_health_stats_metrics(srv, c):
    assert c.health()
    st = c.stats()
    for key in ("kv_capacity_tokens", "kv_used_tokens", "kv_pinned_tokens", "kv_host_tokens",
                "streams_open", "requests_running", "preemptions", "tokens_invalidated"):
        assert key in st
    assert st["kv_capacity_tokens"] == 2048 and set(st["preemptions"]) == {"recompute", "swap"}
    c.generate(input_ids=prompt(1, 12), sampling_params=SP)
    text = httpx.get(srv.url + "/metrics").text
    assert "stream2llm_ttft_seconds_bucket" in text and "stream2llm_kv_tokens" in text
    assert "stream2llm_chunk_post_seconds" in text and 'stream2llm_preemptions{kind="swap"}' in text


def test_append_stream_lifecycle(c):
    ids = prompt(2, 30)
    ref = c.generate(input_ids=ids, sampling_params=SP)
    rid = c.open_stream(sampling_params=SP, input_ids=ids[:10])
    ack = c.send_chunk(rid, input_ids=ids[10:25])
    assert ack.rid == rid and ack.input_tokens == 25 and ack.invalidated_tokens == 0
    ack = c.send_chunk(rid, input_ids=ids[25:], final=True)
    assert ack.input_tokens == 30
    out = c.result(rid)
    assert out["output_ids"] == ref["output_ids"] and out["text"] == ref["text"]
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length"} and meta["completion_tokens"] == 4
    assert meta["prompt_tokens"] == 30 and meta["ttft_s"] >= 0
    assert meta["ttft_from_open_s"] >= meta["ttft_s"]
    assert c.result(rid) == out  # results stay readable


def test_update_stream_reports_cached_and_invalidated(c):
    rid = c.open_stream(mode="update", sampling_params=SP)
    a = prompt(3, 40)
    c.send_chunk(rid, input_ids=a)
    deadline = time.time() + 10
    while c.stats()["streams_open"] and time.time() < deadline:  # let it prefill
        ack = c.send_chunk(rid, input_ids=a)  # identical version: nothing invalidated
        assert ack.invalidated_tokens == 0
        if ack.cached_tokens == 40:
            break
        time.sleep(0.05)
    b = a[:25] + prompt(4, 5)
    ack = c.send_chunk(rid, input_ids=b, final=True)
    assert ack.cached_tokens == 25 and ack.invalidated_tokens == 15 and ack.input_tokens == 30
    out = c.result(rid)
    assert out["output_ids"] == c.generate(input_ids=b, sampling_params=SP)["output_ids"]


def test_text_chunks_append_and_update(c):
    rid = c.open_stream(sampling_params=SP, text="the quick brown fox")
    c.send_chunk(rid, text=" jumps over the lazy dog", final=True)
    ids_out = c.result(rid)["output_ids"]
    whole = c.generate(text="the quick brown fox jumps over the lazy dog", sampling_params=SP)
    assert ids_out == whole["output_ids"]  # word boundaries at the cut: same ids
    rid = c.open_stream(mode="update", sampling_params=SP, text="a first draft")
    c.send_chunk(rid, text="the quick brown fox jumps over the lazy dog", final=True)
    assert c.result(rid)["output_ids"] == whole["output_ids"]


def test_sse_matches_sglang_format(srv, c):
    ids = prompt(5, 12)
    rid = c.open_stream(sampling_params=SP, input_ids=ids, final=True)
    with httpx.stream("GET", f"{srv.url}/v1/streams/{rid}/result", params={"stream": "true"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_bytes())
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    events = [orjson.loads(f[len(b"data: "):]) for f in frames[:-2]]
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    for ev in events:
        assert set(ev) == {"text", "output_ids", "meta_info"}
    last = events[-1]
    assert len(last["output_ids"]) == 4 and last["meta_info"]["finish_reason"]["type"] == "length"
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    lens = [len(e["output_ids"]) for e in events]
    assert lens == sorted(lens)  # cumulative, like SGLang's non-incremental stream
    assert last["output_ids"] == c.generate(input_ids=ids, sampling_params=SP)["output_ids"]
    streamed = list(c.generate_stream(input_ids=ids, sampling_params=SP))
    assert streamed[-1]["output_ids"] == last["output_ids"]


def test_client_stream_result_and_abort(c):
    rid = c.open_stream(sampling_params={"max_new_tokens": 3}, input_ids=prompt(6, 8), final=True)
    evs = list(c.stream_result(rid))
    assert evs[-1]["meta_info"]["finish_reason"] is not None
    rid = c.open_stream(sampling_params=SP, input_ids=prompt(7, 50))
    c.abort(rid)
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=[1000], final=True)
    assert e.value.status == 404
    deadline = time.time() + 10
    while c.stats()["streams_open"] and time.time() < deadline:
        time.sleep(0.05)
    assert idle_stats(c)["kv_used_tokens"] == c.stats()["kv_evictable_tokens"]


def test_generate_sampling_and_stop(c):
    ids = prompt(8, 16)
    greedy = c.generate(input_ids=ids, sampling_params={"max_new_tokens": 6})
    s1 = c.generate(input_ids=ids, sampling_params={"max_new_tokens": 6, "temperature": 1.0,
                                                     "seed": 7, "top_p": 0.9, "top_k": 50})
    s2 = c.generate(input_ids=ids, sampling_params={"max_new_tokens": 6, "temperature": 1.0,
                                                     "seed": 7, "top_p": 0.9, "top_k": 50})
    assert s1["output_ids"] == s2["output_ids"]  # seeded sampling is reproducible
    stop_tok = greedy["output_ids"][2]
    out = c.generate(input_ids=ids, sampling_params={"max_new_tokens": 6,
                                                      "stop_token_ids": [stop_tok]})
    assert out["output_ids"] == greedy["output_ids"][:3]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_tok}
    word = greedy["text"].split()[1]
    out = c.generate(input_ids=ids, sampling_params={"max_new_tokens": 6, "stop": word})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": word}
    assert word not in out["text"] and greedy["text"].startswith(out["text"].rstrip())


def test_openai_routes(srv):
    base = srv.url
    r = httpx.post(base + "/v1/completions", json={"prompt": "hello there", "max_tokens": 3,
                                                   "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    r = httpx.post(base + "/v1/chat/completions", json={
        "model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "temperature": 0, "stream": True})
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert httpx.get(base + "/v1/models").json()["data"][0]["object"] == "model"


@pytest.mark.parametrize("method,path,body,status", [
    ("post", "/v1/streams/nope/chunks", {"input_ids": [1000]}, 404),
    ("get", "/v1/streams/nope/result", None, 404),
    ("delete", "/v1/streams/nope", None, 404),
    ("post", "/v1/streams", {"mode": "sideways"}, 422),
    ("post", "/v1/streams", {"input_ids": "abc"}, 422),
    ("post", "/v1/streams", {"input_ids": [1, -2]}, 422),
    ("post", "/v1/streams", {"text": "a", "input_ids": [1]}, 422),
    ("post", "/v1/streams", {"finale": True}, 422),
    ("post", "/v1/streams", {"sampling_params": {"max_new_tokens": 0}}, 422),
    ("post", "/v1/streams", {"sampling_params": {"temperature": -1}}, 422),
    ("post", "/v1/streams", {"input_ids": [], "final": False}, 400),
    ("post", "/v1/streams", {"input_ids": [10**9]}, 400),
    ("post", "/v1/streams", {"input_ids": list(range(1000, 3100))}, 400),
    ("post", "/v1/streams", {"input_ids": [1000], "sampling_params": {"max_new_tokens": 5000}}, 400),
    ("post", "/generate", {"input_ids": []}, 400),
    ("post", "/generate", {"text": 5}, 422),
    ("post", "/v1/completions", {"prompt": "x", "n": 2}, 422),
])
def test_bad_input_is_4xx_and_changes_nothing(srv, c, method, path, body, status):
    before = idle_stats(c)
    r = getattr(httpx, method)(srv.url + path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert c.stats() == before


def test_stream_errors_4xx(c):
    rid = c.open_stream(sampling_params=SP, input_ids=prompt(9, 10))
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=[])
    assert e.value.status == 400
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=list(range(1000, 3100)))
    assert e.value.status == 400
    with pytest.raises(ServerError) as e:
        c.open_stream(rid=rid)
    assert e.value.status == 409
    r = httpx.post(f"{c.url}/v1/streams/{rid}/chunks", json={"input_ids": [7], "mode": "update"})
    assert r.status_code == 409 and "append mode" in r.json()["error"]  # a mode mix-up
    c.send_chunk(rid, input_ids=[1000], final=True)
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=[1001])
    assert e.value.status == 409
    assert len(c.result(rid)["output_ids"]) == 4
    rid = c.open_stream(mode="update", sampling_params=SP, input_ids=prompt(9, 10))
    with pytest.raises(ServerError) as e:
        c.send_chunk(rid, input_ids=[], final=True)
    assert e.value.status == 400
    r = httpx.post(f"{c.url}/v1/streams/{rid}/chunks", json={"input_ids": [7], "mode": "append"})
    assert r.status_code == 409 and "update mode" in r.json()["error"]
    c.abort(rid)


def test_api_key_required_except_health():
    with server(max_total_tokens=256, api_key="sekret") as h:
        assert httpx.get(h.url + "/health").status_code == 200
        r = httpx.get(h.url + "/v1/stats")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.post(h.url + "/generate", json={"input_ids": [1000]},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        with Client(h.url, api_key="sekret") as c:
            assert c.stats()["kv_capacity_tokens"] == 256
            assert len(c.generate(input_ids=[1000, 1001], sampling_params=SP)["output_ids"]) == 4


def test_messages_are_validated_msgpack_not_pickle():
    import pickle

    from srt_ext import messages as m

    msg = m.AddChunk(1, "r", [1, 2], True, 0.5)
    assert m.decode_to_worker(m.encode(msg)) == msg
    for bad in (pickle.dumps(msg), b"\x00garbage",
                m.encode(m.AddChunk(1, "r", [1, 2])).replace(b"\x01\x02", b"\x01\xff")):  # fmt: skip
        with pytest.raises(m.MessageError):
            m.decode_to_worker(bad)
    spec = m.SamplingSpec(max_new_tokens=0)
    with pytest.raises(m.MessageError, match="max_new_tokens"):
        m.decode_to_worker(m.encode(m.Generate(2, "g", [5], spec)))


def test_dead_worker_fails_requests_instead_of_hanging():
    # no restart here (max_worker_restarts=0): it checks the dead state itself;
    # recovery is tested in test_server_reliability.py
    with server(max_total_tokens=256, max_worker_restarts=0) as h, h.client() as c:
        rid = c.open_stream(sampling_params=SP, input_ids=[1000, 1001])
        h._server.config.app.state.svc.link.proc.kill()
        with pytest.raises(ServerError) as e:
            c.result(rid)
        assert e.value.status == 503 and "died" in e.value.reason
        assert not c.health()
        with pytest.raises(ServerError) as e:
            c.generate(input_ids=[1000])
        assert e.value.status == 503
