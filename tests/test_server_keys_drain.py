"""Left from the reliability work (issue 12): limits per API key, a plain (non-SSE)
result reader that leaves aborts like an SSE reader, and the prefill server of a
disaggregated pair drains on SIGTERM like a plain server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from server_helpers import prompt, server

from srt_ext.client.rest import Client, ServerError
from srt_ext.launch import ServerHandle, _free_socket, _wait_healthy

pytestmark = pytest.mark.timeout(300)
SP = {"max_new_tokens": 4}


def test_limits_count_per_api_key(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# name key\nalice ka\nbob kb\n")
    with server(max_total_tokens=1024, max_streams_per_client=1, api_key_file=str(keys)) as h:
        a, b = Client(h.url, api_key="ka"), Client(h.url, api_key="kb")
        assert httpx.post(h.url + "/v1/streams", json={}, headers={"Authorization": "Bearer kc"}).status_code == 401
        first = a.open_stream(sampling_params=SP, input_ids=prompt(1, 10))
        with pytest.raises(ServerError) as e:  # alice's cap, same address as bob
            a.open_stream(sampling_params=SP)
        assert e.value.status == 429 and "key:alice" in e.value.reason
        other = b.open_stream(sampling_params=SP, input_ids=prompt(2, 10))  # bob is not capped by alice
        a.abort(first)
        b.abort(other)
        a.open_stream(sampling_params=SP)  # the cap counts live streams only


def test_bad_api_key_file_is_a_clear_error(tmp_path):
    from srt_ext.cli.serve import check_args
    from stream2llm.cli import build_parser

    bad = tmp_path / "keys"
    bad.write_text("alice ka\nbob\n")
    args = build_parser("serve").parse_args(["serve", "--api-key-file", str(bad)])
    assert "keys:2: expected 'NAME KEY'" in (check_args(args) or "")
    bad.write_text("alice ka\nbob ka\n")
    assert "repeats the key of alice" in (check_args(args) or "")


def test_plain_reader_disconnect_aborts():
    with server(max_total_tokens=2048, reader_disconnect="abort") as h, h.client() as c:
        rid = c.open_stream(sampling_params={"max_new_tokens": 1500, "ignore_eos": True},
                            input_ids=prompt(3, 20), final=True)  # fmt: skip
        with pytest.raises(httpx.ReadTimeout):  # the reader gives up and leaves
            httpx.get(f"{h.url}/v1/streams/{rid}/result", timeout=httpx.Timeout(10, read=0.5))
        deadline = time.monotonic() + 20
        while c.stats()["streams_open"] and time.monotonic() < deadline:
            time.sleep(0.1)
        out = c.result(rid)
        assert out["meta_info"]["finish_reason"] == {"type": "abort"} and len(out["output_ids"]) < 1500
        assert 'stream2llm_reaped_total{reason="disconnect"} 1.0' in httpx.get(h.url + "/metrics").text


def test_one_shot_client_disconnect_aborts():
    """A non-streaming one-shot (/generate and the OpenAI routes) whose client leaves
    is aborted, as a streaming one is: it does not compute to max_new_tokens for nobody."""
    long_ = 1500
    bodies = {
        "/generate": {"input_ids": prompt(4, 20),
                      "sampling_params": {"max_new_tokens": long_, "ignore_eos": True}},
        "/v1/completions": {"prompt": prompt(5, 20), "max_tokens": long_, "temperature": 0},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Tell me a story."}],
                                 "max_tokens": long_, "temperature": 0},
    }  # fmt: skip
    with server(max_total_tokens=2048) as h, h.client() as c:
        for n, (route, body) in enumerate(bodies.items(), 1):
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and leaves
                httpx.post(h.url + route, json=body, timeout=httpx.Timeout(10, read=0.5))
            deadline = time.monotonic() + 20
            while c.stats()["streams_open"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.stats()["streams_open"] == 0, route
            metrics = httpx.get(h.url + "/metrics").text
            assert f'stream2llm_finished_total{{reason="abort"}} {n}.0' in metrics, route


@pytest.fixture(scope="module")
def prefill_pair():
    """`stream2llm serve` as a decode server and its prefill server (children)."""
    with _free_socket("127.0.0.1") as s1, _free_socket("127.0.0.1") as s2:
        port, boot = s1.getsockname()[1], f"tcp://127.0.0.1:{s2.getsockname()[1]}"
    base = [sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "reference", "--threads", "1",
            "--max-total-tokens", "1024", "--log-level", "warning"]  # fmt: skip
    dec = subprocess.Popen(base + ["--disaggregation-mode", "decode", "--bootstrap", boot])
    pre = subprocess.Popen(base + ["--port", str(port), "--shutdown-grace", "3",
                                   "--disaggregation-mode", "prefill", "--decode-url", boot])
    h = ServerHandle(f"http://127.0.0.1:{port}", None, proc=pre)
    yield h
    h.stop()
    dec.send_signal(signal.SIGTERM)
    dec.wait(30)


@pytest.mark.slow
def test_prefill_server_drains_on_sigterm(prefill_pair):
    h = prefill_pair
    _wait_healthy(h, 300)
    with h.client() as c:
        busy = c.open_stream(sampling_params=SP, input_ids=prompt(10, 30))
        stuck = c.open_stream(sampling_params=SP, input_ids=prompt(11, 30))
        h._proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while c.health() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ServerError) as e:  # new work is refused ...
            c.open_stream(sampling_params=SP)
        assert e.value.status == 503 and "shutting down" in e.value.reason
        c.send_chunk(busy, input_ids=[1000], final=True)  # ... open streams finish (decoded remotely)
        assert len(c.result(busy)["output_ids"]) == 4
        with pytest.raises(ServerError) as e:
            c.result(stuck)
        assert e.value.status == 410  # still open when the grace period ended
    assert h._proc.wait(30) == 0
