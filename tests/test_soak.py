"""Load and fuzz against a real server with a small KV pool (issue 6).

The soak: ~100 streams with random chunk timings, modes, aborts, walk-aways and
reader disconnects (``eval.soak``, the same driver as the 1,000-stream run in
docs/reliability.md): nothing leaked, nothing lost, every output exact.
The fuzz: random JSON (and non-JSON) bodies against every route: never a 5xx,
the server stays healthy, KV back at the idle baseline.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.soak import SoakConfig, leaks, run_soak
from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.launch import launch_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def srv():
    with launch_server(model_path=TINY_MODEL, max_total_tokens=384, token_budget=64, stream_idle_timeout=1.0,
                       threads=1) as h:  # fmt: skip
        yield h


def test_soak_no_leak_no_loss_exact(srv):
    cfg = SoakConfig(streams=100, concurrency=16, seed=1, prompt_tokens=(8, 120),
                     idle_timeout_s=1.0, max_delay_s=0.03)  # fmt: skip
    rep = asyncio.run(run_soak(srv.url, cfg))
    assert rep["lost"] == 0 and rep["errors"] == {}, rep["outcomes"]
    assert rep["leaks"] == {}, rep["final_stats"]
    assert rep["mismatches"] == 0 and rep["checked_exact"] > 50
    kinds = rep["outcomes"]
    assert kinds.get("reaped", 0) > 0 and kinds.get("aborted", 0) > 0, kinds
    assert sum(kinds.values()) == 100
    pre = rep["final_stats"]["preemptions"]
    assert pre["recompute"] + pre["swap"] > 0  # the pool was really under pressure


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["text", "input_ids", "final", "mode", "rid", "sampling_params", "max_new_tokens",
        "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos",
        "stream", "prompt", "messages", "max_tokens", "n", "model"]  # fmt: skip
SMALL = st.integers(-3, 40) | st.lists(st.integers(-2, 40000), max_size=6)
BODY = (st.dictionaries(st.sampled_from(KEYS), JSON | SMALL, max_size=6)
        | st.dictionaries(st.just("sampling_params"),
                          st.dictionaries(st.sampled_from(KEYS), JSON | SMALL, max_size=5))
        | JSON)  # fmt: skip
ROUTES = [("POST", "/v1/streams"), ("POST", "/v1/streams/{rid}/chunks"),
          ("GET", "/v1/streams/{rid}/result"), ("DELETE", "/v1/streams/{rid}"),
          ("POST", "/generate"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
          ("POST", "/flush_cache"), ("GET", "/v1/stats"), ("GET", "/health"),
          ("GET", "/metrics"), ("GET", "/v1/models")]  # fmt: skip


def test_fuzz_rest_api_never_5xx(srv):
    opened: list[str] = []
    with httpx.Client(base_url=srv.url, timeout=60.0) as http:
        live = http.post("/v1/streams", json={"input_ids": [1000, 1001]}).json()["rid"]
        opened.append(live)

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(route=st.sampled_from(ROUTES), body=BODY, raw=st.booleans(),
               rid=st.sampled_from(["nope", live, "..", "x" * 300]))  # fmt: skip
        def one(route: tuple[str, str], body: object, raw: bool, rid: str) -> None:
            method, path = route
            if method == "GET" and rid == live:
                rid = "nope"  # a result read of an open stream waits for it (by design)
            kw: dict = {}
            if method == "POST":
                kw = {"content": repr(body).encode()} if raw else {"json": body}
            try:
                r = http.request(method, path.format(rid=rid), **kw)
            except ValueError:  # a body httpx cannot encode as JSON
                return
            assert r.status_code < 500, (method, path, body, r.text)
            if r.status_code == 201:
                opened.append(r.json()["rid"])

        one()
        assert http.get("/health").status_code == 200
        for rid in opened:
            http.delete(f"/v1/streams/{rid}")
        for _ in range(100):
            stats = http.get("/v1/stats").json()
            if not leaks(stats):
                break
            asyncio.run(asyncio.sleep(0.1))
        assert leaks(stats) == {}, stats
        assert stats["kv_capacity_tokens"] == 384
