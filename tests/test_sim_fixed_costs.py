"""The simulator charges a profile's fixed costs where a real server pays them."""

from __future__ import annotations

import pytest

from eval.sim import SimConfig, simulate, stretch_delays
from eval.workloads import generate
from scheduler.cost_model import CostModel, FixedCosts
from scheduler.step_model import attention_pairs
from stream2llm.trace import Chunk, Query

NS = [16 << i for i in range(8)]
FIXED = {"request_s": 0.01, "chunk_s": 0.02, "ack_s": 0.005, "step_s": 0.003,
         "sampled_token_s": 0.004, "sample_tile": 1, "tokenize_s_per_1k": 0.5}


def _profile(per_token: float, fixed: dict | None = None) -> CostModel:
    prof = {"name": "t", "kv_capacity_tokens": 100_000,
            "prefill": {"tokens": NS, "seconds": [1e-3 + per_token * n for n in NS]},
            "swap": {"tokens": NS, "seconds": [1e-4 + 1e-7 * n for n in NS]}}
    if fixed is not None:
        prof["fixed"] = fixed
    return CostModel(prof)


def _query(sizes: list[int], times: list[float]) -> Query:
    chunks, tok = [], 1000
    for j, (n, t) in enumerate(zip(sizes, times, strict=True)):
        chunks.append(Chunk(t, token_ids=tuple(range(tok, tok + n)), final=j == len(sizes) - 1))
        tok += n
    return Query("q", 0.0, "append", tuple(chunks), 1)


def test_fixed_costs_are_charged_on_the_ttft_path() -> None:
    cm, q = _profile(1e-5, FIXED), _query([300, 40], [0.0, 1.0])
    cfg = SimConfig(token_budget=4096, kv_capacity_tokens=100_000)
    s = simulate([q], cfg, cm)
    fwd = cm.step(40, attention_pairs(300, 40))
    want = 0.02 + 0.5 * 40 / 1000 + 0.003 + fwd + 0.004 + 0.01
    assert s.ttft_s == [pytest.approx(want)]
    ns = simulate([q], SimConfig(token_budget=4096, kv_capacity_tokens=100_000, streaming=False), cm)
    fwd = cm.step(340, attention_pairs(0, 340))
    assert ns.ttft_s == [pytest.approx(0.02 + 0.5 * 340 / 1000 + 0.003 + fwd + 0.004 + 0.01)]
    # without fixed costs the same trace is faster by exactly those terms
    bare = simulate([q], cfg, _profile(1e-5))
    assert bare.ttft_s[0] == pytest.approx(cm.step(40, attention_pairs(300, 40)))
    assert FixedCosts().sampled_s(3) == 0.0
    assert FixedCosts(sampled_token_s=1.0, sample_tile=8).sampled_s(9) == 2.0


def test_client_waits_for_the_reply_given_between_steps() -> None:
    # chunk 0 takes ~1 s to prefill; chunk 1 lands during that step, so its reply (and
    # the final chunk, sent only after it) waits for the step to end
    cm, q = _profile(1e-3, FIXED), _query([1000, 20, 20], [0.0, 0.1, 0.2])
    base = SimConfig(token_budget=4096, kv_capacity_tokens=100_000)
    free = simulate([q], base, cm)
    waits = simulate([q], SimConfig(token_budget=4096, kv_capacity_tokens=100_000,
                                    client_awaits_acks=True), cm)
    sent = lambda r: r.ttft_from_arrival_s[0] - r.ttft_s[0]  # noqa: E731
    assert sent(free) == pytest.approx(0.2)
    step0 = 0.02 + 0.5 + 0.003 + cm.step(1000, attention_pairs(0, 1000))  # ends the first step
    assert sent(waits) == pytest.approx(step0 + 0.005)


def test_delay_multiplier_stretches_every_delay_by_default() -> None:
    qs = generate("crawler", qps=1.0, num_queries=3, seed=0, delay_multiplier=4.0)
    plain = generate("crawler", qps=1.0, num_queries=3, seed=0)
    for a, g, p in zip(stretch_delays(qs, 4.0), stretch_delays(qs, 4.0, "gaps"), plain, strict=True):
        assert a.chunks[0].t_s == pytest.approx(4 * p.chunks[0].t_s)
        assert a.retrieval_s == pytest.approx(4 * p.retrieval_s)
        assert g.chunks[0].t_s == p.chunks[0].t_s
    with pytest.raises(ValueError):
        stretch_delays(qs, 4.0, "first")


def test_streaming_client_pays_its_result_request_and_legs_add_up() -> None:
    # result_s (a stream's client asks for its result after the final chunk's reply)
    # replaces request_s on the streaming way out only; the one-shot keeps request_s
    cm_req = _profile(1e-5, FIXED)
    cm_res = _profile(1e-5, FIXED | {"result_s": 0.03})
    q = _query([300, 40], [0.0, 1.0])
    cfg = SimConfig(token_budget=4096, kv_capacity_tokens=100_000)
    ns_cfg = SimConfig(token_budget=4096, kv_capacity_tokens=100_000, streaming=False)
    a, b = simulate([q], cfg, cm_req), simulate([q], cfg, cm_res)
    assert b.ttft_s[0] - a.ttft_s[0] == pytest.approx(0.03 - 0.01)
    assert simulate([q], ns_cfg, cm_res).ttft_s == simulate([q], ns_cfg, cm_req).ttft_s
    # the per-query legs add up to the TTFT: way in, worker, way out
    legs = b.legs_s["q"]
    assert sum(legs.values()) == pytest.approx(b.ttft_s[0])
    assert legs["in"] == pytest.approx(0.02 + 0.5 * 40 / 1000)
    assert legs["out"] == pytest.approx(0.03)
    with pytest.raises(ValueError):
        FixedCosts.from_profile({"fixed": {"result_s": -1.0}})
