"""`stream2llm replay` against SGLang's own server with our plugin (the default
engine; the shared tiny-model server of tests/sglang_helpers.py): a few
time-scaled queries of each workload, streaming and not, write sim's JSON schema
with every request answered, and a streamed query gives the one-shot's tokens."""

from __future__ import annotations

import argparse
import json

import pytest
from sglang_helpers import sglang_server  # noqa: F401  (the session's SGLang server)

from stream2llm.cli import main

pytestmark = pytest.mark.timeout(400)
ROW_KEYS = {"scheduler", "streaming", "ttft_s", "ttft_from_arrival_s", "completion_time_s",
            "preemptions", "tokens_invalidated"}  # fmt: skip


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_small_replay(sglang_server, tmp_path, workload):  # noqa: F811
    out = tmp_path / f"{workload}.json"
    argv = ["replay", "--url", sglang_server.url, "--workload", workload, "--qps", "4",
            "--num-queries", "3", "--time-scale", "0.05", "--max-new-tokens", "2",
            "--max-input-words", "600", "--json", str(out), "--quiet"]  # fmt: skip
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
    # a stream's result carries the frontend's server-side TTFT (final chunk -> first
    # token), never more than the client's, which adds the HTTP legs
    stream = rows[1]
    assert 0 < stream["server_ttft_s"]["p50"] <= stream["ttft_s"]["p50"]


def _ns(**kw) -> argparse.Namespace:
    base = {"max_new_tokens": 1, "concurrency_limit": 4, "request_timeout": 120.0,
            "api_key": None, "time_scale": 0.02, "flush": True, "rounds": 2, "quiet": True}
    return argparse.Namespace(**{**base, **kw})


def test_flush_before_each_pass_leaves_nothing_cached(sglang_server):  # noqa: F811
    """With the cache flushed, a final input replayed twice is computed twice."""
    from eval.replay import run_passes
    from eval.replay_query import fit_context
    from eval.workloads import generate

    qs = [fit_context(q, 300) for q in generate("crawler", qps=4, num_queries=1, seed=1, text=True)]
    ns = _ns()
    out = run_passes(sglang_server.url, qs, ["non-streaming"], ns)["non-streaming"]
    assert len(out.outs) == 2 and all(o.error is None for o in out.outs)
    assert [o.cached_tokens for o in out.outs] == [0, 0]
    ns.flush = False  # the old way: the second pass finds the first one's prefix cached
    out = run_passes(sglang_server.url, qs, ["non-streaming"], ns)["non-streaming"]
    assert out.outs[1].cached_tokens > 0


def test_streamed_replay_gives_the_one_shot_tokens(sglang_server):  # noqa: F811
    """A crawl of ten chunks streamed into SGLang's scheduler answers with exactly the
    tokens of its whole input sent at once (greedy, cache flushed before each pass)."""
    from eval.replay import run_passes
    from eval.replay_query import fit_context
    from eval.workloads import generate

    qs = [fit_context(q, 800) for q in generate("crawler", qps=4, num_queries=2, seed=0, text=True)]
    assert max(len(q.chunks) for q in qs) >= 5  # really streamed in pieces
    res = run_passes(sglang_server.url, qs, ["non-streaming", "streaming"],
                     _ns(max_new_tokens=4, rounds=1, time_scale=0.05))  # fmt: skip
    one = {o.qid: o for o in res["non-streaming"].outs}
    streamed = {o.qid: o for o in res["streaming"].outs}
    assert set(one) == set(streamed) == {q.qid for q in qs}
    for qid, o in streamed.items():
        assert o.error is None and one[qid].error is None
        assert len(o.output_ids) == 4 and o.output_ids == one[qid].output_ids


def test_refuses_non_loopback(tmp_path):
    argv = ["replay", "--url", "http://example.com:80", "--workload", "crawler", "--quiet"]
    assert main(argv) == 2
