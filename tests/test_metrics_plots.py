"""eval.metrics (percentiles, speedups, tables, result rows) and eval.plots (PNG output)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eval.metrics import format_table, percentiles, result_row, speedups
from eval.plots import plot_timeline, plot_ttft_ccdf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_percentiles() -> None:
    p = percentiles(np.arange(1, 1001, dtype=float))
    assert p["p50"] == pytest.approx(500.5)
    assert p["p99"] == pytest.approx(990.01)
    assert p["p999"] == pytest.approx(999.001)
    assert p["mean"] == pytest.approx(500.5)
    assert set(p) == {"p50", "p95", "p99", "p999", "mean"}
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_speedups() -> None:
    base = {"p50": 10.0, "p95": 20.0, "p99": 40.0, "p999": 80.0, "mean": 12.0}
    sched = {"p50": 1.0, "p95": 4.0, "p99": 0.0, "p999": math.nan, "mean": 6.0}
    s = speedups(base, sched)
    assert s["p50"] == 10.0 and s["p95"] == 5.0 and s["mean"] == 2.0
    assert math.isnan(s["p99"]) and math.isnan(s["p999"])


def test_result_row_schema() -> None:
    row = result_row("fcfs", True, [0.1, 0.2, 0.3], [1.0, 2.0, 3.0], 42.5, {"swap": 3}, 17)
    assert row["scheduler"] == "fcfs" and row["streaming"] is True
    assert row["ttft_s"]["p50"] == pytest.approx(0.2)  # type: ignore[index]
    assert row["ttft_from_arrival_s"]["mean"] == pytest.approx(2.0)  # type: ignore[index]
    assert row["preemptions"] == {"recompute": 0, "swap": 3}
    assert row["completion_time_s"] == 42.5 and row["tokens_invalidated"] == 17
    json.loads(json.dumps(row))  # plain JSON types only
    with pytest.raises(ValueError):
        result_row("x", False, [], [], 0.0, {"evict": 1}, 0)


def test_format_table() -> None:
    out = format_table(
        [{"name": "fcfs", "p50": 0.123456, "n": 12000}, ("default-S", math.nan, 7)],
        ["name", "p50", "n"],
    )
    lines = out.splitlines()
    assert lines[0].split() == ["name", "p50", "n"] and set(lines[1]) <= {"-", " "}
    assert "0.1235" in lines[2] and "12,000" in lines[2] and "nan" in lines[3]
    assert lines[2].index("12,000") + len("12,000") == len(lines[2])  # numbers right-aligned
    with pytest.raises(ValueError):
        format_table([(1, 2)], ["a"])


def test_plot_ttft_ccdf(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = plot_ttft_ccdf(
        {"fcfs": rng.lognormal(-2, 1, 500).tolist(), "NS": [0.5, 1.0, math.inf], "empty": []},
        tmp_path / "sub" / "ccdf.png",
        title="crawler QPS 4",
    )
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_plot_timeline(tmp_path: Path) -> None:
    events = [
        {"t": 0.5, "kind": "chunk", "rid": "q0", "tokens": 900},
        {"t": 0.52, "kind": "prefill", "rid": "q0", "tokens": 900, "dur": 0.05},
        {"t": 1.4, "kind": "final", "rid": "q0", "tokens": 300},
        {"t": 1.42, "kind": "prefill", "rid": "q0", "tokens": 300},
        {"t": 1.5, "kind": "first_token", "rid": "q0", "tokens": 1},
        {"t": 0.9, "kind": "final", "rid": "q1", "tokens": 2000},
    ]
    data = plot_timeline(events, tmp_path / "timeline.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    with pytest.raises(ValueError):
        plot_timeline([{"t": 0.0, "kind": "decode", "rid": "q0", "tokens": 1}], tmp_path / "x.png")
