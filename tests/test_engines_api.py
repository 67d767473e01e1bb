"""The stream REST API on both engines: the same calls give the same statuses,
bad input is refused with a JSON reason and changes nothing, and no KV stays
pinned once streams end (finished, aborted while parked, aborted while queued).

On ``--engine sglang`` these calls cross SGLang's own tokenizer manager ->
scheduler IPC; a KV leak there also trips SGLang's idle pool check, which kills
its scheduler (the session fixture then reports the dead server).
"""

from __future__ import annotations

import httpx
import pytest
from engine_servers import GREEDY, EngineServer
from server_helpers import prompt

pytestmark = pytest.mark.timeout(600)
SP = {"max_new_tokens": 4, **GREEDY}


@pytest.fixture
def srv(engine_srv: EngineServer) -> EngineServer:
    engine_srv.flush()
    return engine_srv


@pytest.fixture
def http(srv: EngineServer):
    with httpx.Client(base_url=srv.url, timeout=120.0) as h:
        yield h


def _open(http: httpx.Client, **body) -> str:
    r = http.post("/v1/streams", json={"sampling_params": SP, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["rid"])


def test_append_stream_acks_and_result(srv, http):
    ids = prompt(31, 50)
    rid = _open(http, input_ids=ids[:20])
    srv.wait_pinned(20)
    if srv.engine == "sglang":  # computed, then parked out of SGLang's queues (kv.park)
        s = srv.stats()
        assert s["streams_parked"] == 1 and s["kv_pinned_tokens"] == 20, s
    ack = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids[20:45]}).json()
    assert ack == {"rid": rid, "input_tokens": 45, "cached_tokens": 20, "invalidated_tokens": 0}
    ack = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids[45:], "final": True}).json()
    assert ack["input_tokens"] == 50 and ack["cached_tokens"] >= 20
    out = http.get(f"/v1/streams/{rid}/result").json()
    assert len(out["output_ids"]) == 4 and out["meta_info"]["finish_reason"]["type"] == "length"
    assert out["meta_info"]["prompt_tokens"] == 50 and out["meta_info"]["ttft_s"] >= 0
    # SSE replay of a finished stream: cumulative frames, then [DONE]
    with http.stream("GET", f"/v1/streams/{rid}/result", params={"stream": "true"}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"output_ids"' in lines[-2]


def test_final_chunk_sampling_params_replace_the_opening_ones(srv, http):
    rid = _open(http, input_ids=prompt(37, 8))
    r = http.post(f"/v1/streams/{rid}/chunks", json={
        "input_ids": prompt(38, 4), "final": True,
        "sampling_params": {"max_new_tokens": 2, **GREEDY}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(http.get(f"/v1/streams/{rid}/result").json()["output_ids"]) == 2


def test_open_without_input_then_chunks(srv, http):
    ids = prompt(32, 12)
    rid = _open(http)
    ack = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids[:6]}).json()
    assert ack["input_tokens"] == 6
    http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids[6:], "final": True})
    assert len(http.get(f"/v1/streams/{rid}/result").json()["output_ids"]) == 4


@pytest.mark.parametrize("case", [
    ("POST", "/v1/streams", {"mode": "sideways"}, 422),
    ("POST", "/v1/streams", {"input_ids": [1, 2], "finale": True}, 422),
    ("POST", "/v1/streams", {"input_ids": [10**9]}, 400),
    ("POST", "/v1/streams", {"input_ids": [], "final": False}, 400),
    ("POST", "/v1/streams/nope/chunks", {"input_ids": [5]}, 404),
    ("GET", "/v1/streams/nope/result", None, 404),
    ("DELETE", "/v1/streams/nope", None, 404),
])  # fmt: skip
def test_bad_input_is_refused_and_changes_nothing(srv, http, case):
    method, path, body, status = case
    before = srv.stats()
    r = http.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    after = srv.stats()
    assert after["streams_open"] == before["streams_open"] == 0
    assert after["kv_pinned_tokens"] == 0


def test_stream_state_errors(srv, http):
    ids = prompt(33, 10)
    rid = _open(http, input_ids=ids[:5], rid="dup-rid")
    assert http.post("/v1/streams", json={"rid": "dup-rid", "input_ids": [5]}).status_code == 409
    r = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": [1], "mode": "update"})
    assert r.status_code == 409  # an update-style chunk on an append stream
    assert http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": []}).status_code == 400
    r = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": [7], "sampling_params": SP})
    assert r.status_code == 400  # sampling_params only with the final chunk
    http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids[5:], "final": True})
    r = http.post(f"/v1/streams/{rid}/chunks", json={"input_ids": [9]})
    assert r.status_code == 409 and "final" in r.json()["error"]
    out = http.get(f"/v1/streams/{rid}/result").json()
    assert out["meta_info"]["prompt_tokens"] == 10  # the refused chunks changed nothing


def test_no_kv_leak_after_finish_and_aborts(srv, http):
    """Parked, queued-update and finished streams all give their KV back."""
    a = _open(http, input_ids=prompt(34, 40))
    b = _open(http, mode="update", input_ids=prompt(35, 30))
    srv.wait_pinned(70)
    r = http.post(f"/v1/streams/{b}/chunks", json={"input_ids": prompt(35, 30)[:10] + [7, 8]})
    assert r.json()["invalidated_tokens"] == 20 and r.json()["cached_tokens"] == 10
    assert http.delete(f"/v1/streams/{a}").json()["aborted"] is True
    assert http.get(f"/v1/streams/{a}/result").status_code == 404
    http.post(f"/v1/streams/{b}/chunks", json={"input_ids": prompt(36, 20), "final": True})
    assert len(http.get(f"/v1/streams/{b}/result").json()["output_ids"]) == 4
    s = srv.wait_idle()
    assert s["streams_open"] == 0 and s["kv_pinned_tokens"] == 0, s
    srv.flush()
    s = srv.stats()
    assert s["kv_free_tokens"] == s["kv_capacity_tokens"], s  # everything came back
