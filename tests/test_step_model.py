"""The step model counts the calls the engine makes and recovers per-call costs."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from scheduler.cost_model import CostModel
from scheduler.step_model import Layout, features, fit_step
from srt_ext.engines.reference import attention
from stream2llm.tiling import block_span, split_sizes

LAYOUT = Layout(dense_tiles=(1, 2, 4, 8, 16, 32, 64, 128), lm_tiles=(1, 2, 4, 8, 16, 32, 64),
                attn_block=64)  # fmt: skip
TRUE = {"one": 4e-4, "tokens": 6e-6, "pairs": 1.5e-8, "kv": 3e-7, "items": 1e-4,
        "dense": 5e-4, "blocks": 3e-4, "lm": 6e-4}  # fmt: skip


def _seconds(items: list[tuple[int, int]], samples: int) -> float:
    x = features(items, samples, LAYOUT)
    return sum(TRUE[k] * x[k] for k in TRUE)


def _design(rng: random.Random, count: int) -> list[tuple[list[tuple[int, int]], int]]:
    out = []
    for _ in range(count):
        k = rng.randint(1, 5)
        items = [(rng.randint(0, 1500), rng.randint(1, 300)) for _ in range(k)]
        out.append((items, rng.randint(0, k)))
    return out


def _profile(design: list[tuple[list[tuple[int, int]], int]], **extra: object) -> dict:  # type: ignore[type-arg]
    """A profile whose timed steps are ``design`` priced by TRUE."""
    steps = {"items": [[[s, n, int(j < k)] for j, (s, n) in enumerate(its)] for its, k in design],
             "seconds": [_seconds(its, k) for its, k in design]}  # fmt: skip
    ns = [16 << i for i in range(7)]
    return {"name": "synthetic", "layout": {"dense_tiles": list(LAYOUT.dense_tiles),
                                            "lm_tiles": list(LAYOUT.lm_tiles), "attn_block": 64},
            "prefill": {"tokens": ns, "seconds": [_seconds([(0, n)], 0) for n in ns]},
            "swap": {"tokens": ns, "seconds": [1e-4 * n for n in ns]}, "steps": steps,
            **extra}  # fmt: skip


def test_block_span_is_the_loop_the_sized_attention_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine's attention calls one kernel per block_span element: count them
    calls: list[int] = []
    real = attention.attend

    def counting(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "attend", counting)
    q, kv = torch.randn(70, 3, 8), torch.randn(170, 1, 8)
    attention.sized_attention(q, kv, kv, 100, 0.3, 64, (4, 8, 16, 32, 64, 128, 256), F.linear)
    assert len(calls) == len(block_span(100, 70, 64)) == 2  # positions 100..169: blocks 1, 2


def test_features_count_tiles_blocks_and_lm_calls() -> None:
    x = features([(0, 116), (100, 12)], samples=3, layout=LAYOUT)
    assert x["tokens"] == 128 and x["items"] == 2 and x["kv"] == 116 + 112
    assert x["dense"] == len(split_sizes(128, LAYOUT.dense_tiles)) == 1  # one 128-row tile
    assert x["blocks"] == 2 + 1  # 0..115 spans blocks 0-1; 100..111 block 1
    assert x["lm"] == len(split_sizes(3, LAYOUT.lm_tiles)) == 2  # 2 + 1 rows
    smooth = features([(0, 116)], samples=1, layout=None)
    assert smooth["dense"] == smooth["blocks"] == smooth["lm"] == 0


def test_fit_recovers_per_call_costs_from_a_mixed_design() -> None:
    prof = _profile(_design(random.Random(7), 150))
    m = fit_step(prof)
    assert m.prices_sampling and m.r2 > 0.999
    for got, want in ((m.f, TRUE["dense"]), (m.g, TRUE["blocks"]), (m.h, TRUE["lm"])):
        assert got == pytest.approx(want, rel=0.05)
    # held-out steps (another seed) are priced within 1%
    cm = CostModel(prof)
    for its, k in _design(random.Random(8), 40):
        assert cm.step_s(its, k) == pytest.approx(_seconds(its, k), rel=0.01)
    # sampling is in the step model, so the fixed per-tile term is not added again
    assert cm.sampled_s(5) == 0.0


def test_profiles_without_a_layout_keep_the_smooth_model() -> None:
    cm = CostModel.load("h200-tp2-llama3-8b")
    assert cm.step.layout is None and not cm.step.prices_sampling
    assert cm.step.f == cm.step.g == cm.step.h == 0.0
    st = cm.step
    want = st.a + st.b * 40 + st.c * (40 * 300 + 40 * 41 / 2) + st.d * 340 + st.e
    assert cm.step_s([(300, 40)], 1) == pytest.approx(want)
    assert cm.sampled_s(3) == cm.fixed.sampled_s(3)


def test_idle_penalty_interpolates_and_the_simulator_charges_it() -> None:
    from eval.sim import SimConfig, simulate
    from stream2llm.trace import Chunk, Query

    ns = [16 << i for i in range(6)]
    prof = {"name": "idle", "kv_capacity_tokens": 10_000,
            "prefill": {"tokens": ns, "seconds": [1e-3 + 1e-5 * n for n in ns]},
            "swap": {"tokens": ns, "seconds": [1e-4 * n for n in ns]},
            "idle": {"idle_s": [0.01, 0.1], "seconds": [0.001, 0.003]}}  # fmt: skip
    cm = CostModel(prof)
    assert cm.idle_s(0.0) == 0.0 and cm.idle_s(0.005) == pytest.approx(0.0005)
    assert cm.idle_s(0.055) == pytest.approx(0.002) and cm.idle_s(5.0) == 0.003

    def q(qid: str, t: float) -> Query:
        return Query(qid, t, "append", (Chunk(0.0, token_ids=tuple(range(1, 33)), final=True),), 1)

    cfg = SimConfig(token_budget=512, kv_capacity_tokens=10_000, page_size=1)
    no_idle = CostModel({k: v for k, v in prof.items() if k != "idle"})
    # two requests 1 s apart: each step starts cold (the flat end of the curve)
    apart = simulate([q("a", 0.0), q("b", 1.0)], cfg, cm)
    base = simulate([q("a", 0.0), q("b", 1.0)], cfg, no_idle)
    assert [x - y for x, y in zip(apart.ttft_s, base.ttft_s, strict=True)] == [
        pytest.approx(0.003), pytest.approx(0.003)]


def test_step_residuals_price_each_logged_step_with_its_idle_gap(tmp_path) -> None:
    import json

    from eval.step_residuals import load_steps, predicted, totals

    ns = [16 << i for i in range(6)]
    cm = CostModel({"name": "r", "prefill": {"tokens": ns, "seconds": [1e-3 + 1e-5 * n for n in ns]},
                    "swap": {"tokens": ns, "seconds": [1e-4 * n for n in ns]},
                    "idle": {"idle_s": [0.1], "seconds": [0.002]}})  # fmt: skip
    rows = [{"t": 10.0, "wall_s": 0.01, "forward_s": 0.009, "items": [[0, 32, 1]]},
            {"t": 10.06, "wall_s": 0.01, "forward_s": 0.008, "items": [[32, 8, 0], [5, 1, 1]]}]  # fmt: skip
    log = tmp_path / "steps.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = predicted(load_steps(log), cm)
    assert got[0] == pytest.approx(cm.step_s([(0, 32)], 1) + cm.sampled_s(1) + 0.002)  # cold start
    gap = 10.06 - 0.01 - 10.0  # 50 ms idle: half the penalty
    assert got[1] == pytest.approx(cm.step_s([(32, 8), (5, 1)], 1) + cm.sampled_s(1) + 0.001)
    assert gap == pytest.approx(0.05)
    assert totals(load_steps(log), cm) == (pytest.approx(0.017), pytest.approx(sum(got)), 2)


def test_validate_slows_every_engine_curve_a_profile_has(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # `stream2llm validate --speed pass` scales the engine by the calibration pass's
    # measured/predicted forward time, read from the worker's step log
    import json

    from eval.validate_calibration import engine_speed, slowed

    design = _design(random.Random(9), 60)
    cm = CostModel(_profile(design, idle={"idle_s": [0.01, 0.2], "seconds": [1e-4, 1e-3]},
                            fixed={"step_s": 1e-4, "sampled_token_s": 0.0}))  # fmt: skip
    slow = slowed(cm, 1.5)
    for its, k in design[:10]:
        assert slow.step_s(its, k) == pytest.approx(1.5 * cm.step_s(its, k), rel=1e-6)
    assert slow.idle_s(0.2) == pytest.approx(1.5e-3) and slow.fixed.step_s == pytest.approx(1.5e-4)
    # a log of back-to-back steps that each took 1.2x their price gives 1.2
    log = tmp_path / "steps.jsonl"
    t = 100.0
    with log.open("w") as f:
        for its, k in design[:40]:
            fwd = 1.2 * cm.step_s(its, k)
            t += fwd
            items = [[s, n, int(j < k)] for j, (s, n) in enumerate(its)]
            f.write(json.dumps({"items": items, "forward_s": fwd, "wall_s": fwd, "t": t}) + "\n")
    speed, n = engine_speed(log, 10, cm)
    priced = sum(cm.step_s(its, k) for its, k in design[10:40])
    # back to back, so only the first step of the slice is charged an idle penalty
    assert n == 30 and speed == pytest.approx(1.2 * priced / (priced + cm.idle_s(1e9)), rel=1e-6)
    assert engine_speed(log, 35, cm) == (1.0, 5)  # too few steps to judge
