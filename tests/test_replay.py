"""`stream2llm replay` against a real server: a few time-scaled queries of each
workload, streaming and not, write sim's JSON schema with every request answered."""

from __future__ import annotations

import json

import pytest

from srt_ext.engine.model_store import TINY_MODEL
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
    rows = data["results"]
    assert [r["streaming"] for r in rows] == [False, True]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["requests"] == 3 and r["unfinished"] == 0 and not r["errors"]
        assert r["ttft_s"]["p50"] > 0 and r["ttft_s"]["p99"] >= r["ttft_s"]["p50"]


def test_refuses_non_loopback(tmp_path):
    argv = ["replay", "--url", "http://example.com:80", "--workload", "crawler", "--quiet"]
    assert main(argv) == 2
