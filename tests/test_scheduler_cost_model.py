"""Cost model fits, shipped profiles and the recompute-vs-swap rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scheduler.cost_model import CostModel, available_profiles, fit_curve
from scheduler.preemption import PreemptionRule


def test_shipped_profiles_load_and_fit_well() -> None:
    assert {"h200-tp2-llama3-8b", "h100-tp2-llama3-8b", "cpu-reference"} <= set(
        available_profiles())
    for name in ("h200-tp2-llama3-8b", "h100-tp2-llama3-8b", "cpu-reference"):
        cm = CostModel.load(name)
        if cm.derived:  # first-principles curves: the fits must be near perfect
            assert cm.prefill.r2 > 0.99 and cm.swap.r2 > 0.99 and cm.step.r2 > 0.9
        else:  # measured on a machine (stream2llm profile): noisy, but usable
            assert name == "cpu-reference" and cm.prefill.r2 > 0.5 and cm.swap.r2 > 0.5
        assert cm.kv_capacity_tokens and cm.kv_capacity_tokens > 0
        ns = [16, 256, 4096, 65536]
        pre = [cm.prefill_s(n) for n in ns]
        assert pre == sorted(pre) and all(t > 0 for t in pre)
        assert cm.decode_step_s(64, 4096) > cm.decode_step_s(1, 4096) > 0


def test_h200_physical_floors() -> None:
    cm = CostModel.load("h200-tp2-llama3-8b")
    assert 0.1 < cm.prefill_s(8192) < 0.4  # ~150 ms at peak on one GPU, half rate, two GPUs
    assert 0.02 < cm.swap_s(8192) < 0.08  # 1 GiB out and back at ~50 GB/s aggregate
    assert 1.4e6 < cm.kv_capacity_tokens < 1.7e6
    h100 = CostModel.load("h100-tp2-llama3-8b")
    assert h100.kv_capacity_tokens < cm.kv_capacity_tokens
    assert h100.decode_step_s(1, 1024) > cm.decode_step_s(1, 1024)  # slower HBM


def test_fit_picks_the_better_model_and_warns_on_bad_fits() -> None:
    x = np.array([16.0 * 2**i for i in range(10)])
    quad = fit_curve(x, 1e-3 + 1e-6 * x + 1e-10 * x**2)
    assert quad.kind == "quadratic" and quad.r2 > 0.9999
    hinge = fit_curve(x, np.where(x < 1024, 0.01, 0.01 + 1e-4 * (x - 1024)))
    assert hinge.kind == "piecewise" and hinge.r2 > 0.9999
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fit_curve(x, np.array([1.0, 0.0] * 5))
    assert any("R^2" in str(m.message) for m in w)
    with pytest.raises(ValueError):
        fit_curve([1, 2], [1, 2])


def test_preemption_rule_victim_vs_artifact_size() -> None:
    cm = CostModel.load("h200-tp2-llama3-8b")
    assert PreemptionRule("recompute", cm).choose(100_000, 10) == "recompute"
    assert PreemptionRule("swap", cm).choose(10, 10) == "swap"
    ours = PreemptionRule("cost", cm)
    art = PreemptionRule("cost", cm, artifact_cost_rule=True)
    big, small = 32_768, 16
    assert ours.choose(big, small) == cm.recompute_or_swap(big)
    assert art.choose(big, small) == cm.recompute_or_swap(small)
    with pytest.raises(ValueError):
        PreemptionRule("cost", None)
