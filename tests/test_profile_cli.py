"""`stream2llm profile` writes a measured profile that the scheduler's CostModel loads:
on SGLang's engine (the default: its server's prefill and decode, swaps through its
KV pool) and on the reference engine (`--engine reference`, what validate uses)."""

from __future__ import annotations

import json

import pytest

from scheduler.cost_model import CostModel
from srt_ext.engines.reference.model_store import TINY_MODEL
from stream2llm.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.mark.timeout(600)
def test_quick_profile_on_sglang(tmp_path):
    """The default engine: SGLang's own server times the prefill of N fresh tokens on a
    flushed cache, its KV pool the swap; the profile loads and prices both."""
    from srt_ext.cli.profile_sglang import arch
    from srt_ext.engines.reference.model_store import resolve_model

    out = tmp_path / "sg.json"
    argv = ["profile", "--model-path", "tiny-random", "--max-tokens", "2048", "--repeats", "3",
            "--warmup", "1", "--decode-batches", "1,2", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    prof = json.loads(out.read_text())
    assert prof["machine"]["engine"] == prof["method"]["engine"] == "sglang"
    assert prof["machine"]["sglang"] == "0.5.23" and prof["machine"]["dtype"] == "float32"
    sizes = [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert prof["prefill"]["tokens"] == sizes == prof["swap"]["tokens"]
    # every timed prompt was computed, none found cached (the cache flushed, fresh ids)
    assert prof["prefill"]["cached_tokens"] == [0] * len(sizes)
    pre, swap = prof["prefill"]["seconds"], prof["swap"]["seconds"]
    assert all(0 < s < 10 for s in pre + swap)
    assert pre[-1] > pre[0]  # 2,048 tokens cost more to prefill than 16
    # SGLang's step is part of its whole request (which also queues and detokenizes)
    assert all(0 < s <= t for s, t in zip(pre, prof["prefill"]["e2e_seconds"], strict=True))
    assert prof["method"]["swap_checked"] == 4 * len(sizes)  # each trip brought the KV back
    a = arch(resolve_model(TINY_MODEL))
    assert prof["kv_bytes_per_token"] == 2 * a["layers"] * a["kv_heads"] * a["head_dim"] * 4
    dec = prof["decode"]
    assert dec["batch"] == [1, 1, 1, 2, 2, 2] and all(0 < s < 5 for s in dec["seconds"])
    fx = prof["fixed"]
    assert fx["request_s"] > 0 and fx["ack_s"] > 0 and fx["tokenize_s_per_1k"] > 0
    cm = CostModel.load(out)
    assert not cm.derived and cm.prefill_s(200) > cm.prefill_s(20) > 0 and cm.swap_s(48) > 0
    assert cm.recompute_or_swap(128) in ("recompute", "swap")


def test_quick_profile_loads(tmp_path):
    out = tmp_path / "quick.json"
    argv = ["profile", "--engine", "reference", "--model-path", "tiny-random", "--max-tokens", "64", "--repeats", "1",
            "--warmup", "0", "--decode-batches", "1,2", "--threads", "1", "--skip-http",
            "--steps", "24", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    prof = json.loads(out.read_text())
    assert prof["derived"] is False and prof["name"] == "quick"
    assert prof["prefill"]["tokens"] == [16, 32, 64] == prof["swap"]["tokens"]
    assert all(s > 0 for s in prof["prefill"]["seconds"] + prof["swap"]["seconds"])
    assert len(prof["decode"]["batch"]) == len(prof["decode"]["seconds"]) > 0
    assert prof["machine"]["device"] == "cpu" and "fit" in prof
    cm = CostModel.load(out)
    assert not cm.derived and cm.prefill_s(48) > 0 and cm.swap_s(48) > 0
    assert cm.kv_bytes_per_token == prof["kv_bytes_per_token"] > 0
    # the fixed costs: engine-side terms measured, the HTTP ones skipped here (0)
    fx = prof["fixed"]
    assert fx["sampled_token_s"] >= 0 and fx["sample_tile"] == 8  # the CPU LM head: 8-row tiles
    assert fx["step_s"] > 0 and fx["tokenize_s_per_1k"] > 0
    assert "chunk_s" not in fx and set(fx["source"]) >= {"sampled_token_s", "step_s", "chunk_s"}
    assert cm.fixed.sampled_token_s == fx["sampled_token_s"] and cm.fixed.chunk_s == 0.0
    # the served-step design: each step timed, the engine's call layout, the idle penalty
    steps = prof["steps"]
    assert len(steps["items"]) == len(steps["seconds"]) == 24 and min(steps["seconds"]) > 0
    assert any(len(its) > 1 for its in steps["items"]) and any(s for its in steps["items"]
                                                               for *_, s in its)  # fmt: skip
    assert prof["layout"]["attn_block"] == 64 and cm.step.prices_sampling
    assert prof["idle"]["idle_s"] == sorted(prof["idle"]["idle_s"])
    assert cm.idle_s(0.0) == 0.0 and cm.idle_s(10.0) == prof["idle"]["seconds"][-1]


@pytest.mark.slow
def test_http_terms_on_a_real_server():
    """The reference server's HTTP terms (`--engine reference`: worker stamps)."""
    from srt_ext.cli.profile_fixed import http_terms_at
    from srt_ext.launch import launch_server

    with launch_server(model_path=TINY_MODEL, max_total_tokens=4096, threads=1) as h:  # in-thread: starts fastest
        t = http_terms_at(h.url, repeats=3)
    assert set(t) == {"chunk_s", "ack_s", "request_s", "result_s", "tokenize_s_per_1k"}
    assert all(0 <= v < 5.0 for v in t.values()) and t["chunk_s"] > 0 and t["request_s"] > 0
