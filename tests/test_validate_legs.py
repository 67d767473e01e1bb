"""validate's per-leg diagnostics and the HTTP terms it prices from a warm-up pass."""

from __future__ import annotations

import pytest

from eval.validate_calibration import http_terms
from eval.validate_legs import legs_rows
from eval.validate_report import Side


def _leg(http_in: float, api: float, to_worker: float, worker: float, back: float,
         out: float, tokens: int) -> dict[str, float]:  # fmt: skip
    return {"http_in": http_in, "api": api, "to_worker": to_worker, "worker": worker,
            "from_worker": back, "out": out, "tokens": tokens}  # fmt: skip


def _side(legs: dict[str, dict[str, float]]) -> Side:
    return Side([sum(v for k, v in x.items() if k != "tokens") for x in legs.values()], 1.0, 0,
                0, legs_s=legs)  # fmt: skip


def test_http_terms_price_the_way_in_and_both_ways_out() -> None:
    # one-shots carry 1,000 tokens (2 ms of tokenization at 2 ms/1K), streams 0
    ns = {f"n{i}": _leg(0.003, 0.002, 0.001 + i * 1e-4, 0.01, 0.001, 0.002, 1000)
          for i in range(10)}  # fmt: skip
    st = {f"s{i}": _leg(0.003, 0.0, 0.001 + i * 1e-4, 0.004, 0.0005, 0.001, 0)
          for i in range(10)}  # fmt: skip
    t = http_terms({"non-streaming": _side(ns), "streaming": _side(st)}, 0.002)
    # way in: http_in + api - tokenization = 3 ms for both; the link's low decile ~1 ms
    assert t["chunk_s"] == pytest.approx(0.003 + 0.001, abs=2e-4)
    assert t["request_s"] == pytest.approx(0.003) and t["result_s"] == pytest.approx(0.0015)
    with pytest.raises(ValueError):
        http_terms({"non-streaming": _side({}), "streaming": _side(st)}, 0.002)


def test_legs_rows_compare_the_same_queries() -> None:
    meas = {"non-streaming": _side({"a": _leg(1, 1, 1, 5, 1, 1, 0), "b": _leg(1, 1, 1, 7, 1, 1, 0)}),
            "streaming": _side({"a": _leg(1, 0, 0, 2, 0, 1, 0)})}  # fmt: skip
    sim = {"non-streaming": _side({"a": {"in": 2, "worker": 5, "out": 2},
                                   "b": {"in": 2, "worker": 6, "out": 2}}),
           "streaming": _side({"zz": {"in": 1, "worker": 1, "out": 1}})}  # fmt: skip
    rows = legs_rows("c", meas, sim)
    assert [r["leg"] for r in rows] == ["in", "worker", "out"]  # no common streaming query
    worker = rows[1]
    assert worker["measured_ms"] == 6000 and worker["simulated_ms"] == 5500
    assert worker["sim-meas_ms"] == -500  # median over a (0) and b (-1 s), in ms
    assert rows[0]["sim-meas_ms"] == -1000
