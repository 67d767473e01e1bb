"""`stream2llm replay` against a real server: a few time-scaled queries of each
workload, streaming and not, write sim's JSON schema with every request answered."""

from __future__ import annotations

import json

import pytest

from srt_ext.engines.reference.model_store import TINY_MODEL
from stream2llm.cli import main

pytestmark = pytest.mark.timeout(240)
ROW_KEYS = {"scheduler", "streaming", "ttft_s", "ttft_from_arrival_s", "completion_time_s",
            "preemptions", "tokens_invalidated"}  # fmt: skip


@pytest.fixture(scope="module")
def server():
    from srt_ext.launch import launch_server

    with launch_server(model_path=TINY_MODEL, max_total_tokens=8192, threads=1) as h:
        yield h


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_small_replay(server, tmp_path, workload):
    out = tmp_path / f"{workload}.json"
    argv = ["replay", "--url", server.url, "--workload", workload, "--qps", "4",
            "--num-queries", "3", "--time-scale", "0.05", "--max-new-tokens", "2",
            "--json", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["num_queries"] == 3 and data["config"]["time_scale"] == 0.05
    # fair passes: the cache is flushed before each, the order alternates between rounds
    assert data["config"]["flush"] is True and data["config"]["order"] == [
        "non-streaming", "streaming", "streaming", "non-streaming"]
    rows = data["results"]
    assert [r["streaming"] for r in rows] == [False, True]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["requests"] == 6 and r["unfinished"] == 0 and not r["errors"]  # 2 rounds
        assert r["ttft_s"]["p50"] > 0 and r["ttft_s"]["p99"] >= r["ttft_s"]["p50"]


def test_flush_before_each_pass_leaves_nothing_cached(server):
    """With the cache flushed, a final input replayed twice is computed twice."""
    import argparse

    from eval.replay import run_passes
    from eval.replay_query import fit_context
    from eval.workloads import generate

    qs = [fit_context(q, 300) for q in generate("crawler", qps=4, num_queries=1, seed=1, text=True)]
    ns = argparse.Namespace(max_new_tokens=1, concurrency_limit=4, request_timeout=120.0,
                            api_key=None, time_scale=0.02, flush=True, rounds=2, quiet=True)
    out = run_passes(server.url, qs, ["non-streaming"], ns)["non-streaming"]
    assert len(out.outs) == 2 and all(o.error is None for o in out.outs)
    assert [o.cached_tokens for o in out.outs] == [0, 0]
    ns.flush = False  # the old way: the second pass finds the first one's prefix cached
    out = run_passes(server.url, qs, ["non-streaming"], ns)["non-streaming"]
    assert out.outs[1].cached_tokens > 0


def test_refuses_non_loopback(tmp_path):
    argv = ["replay", "--url", "http://example.com:80", "--workload", "crawler", "--quiet"]
    assert main(argv) == 2
