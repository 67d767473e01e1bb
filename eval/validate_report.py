"""`stream2llm validate`'s verdicts and plot: one side of a case, the tolerance check
per cell, and the measured-vs-simulated TTFT CDFs (eval/validate.py runs the cases)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOL = {"p50": 0.20, "p95": 0.20, "p99": 0.30, "completion": 0.05}
COLS = ["case", "mode", "metric", "measured", "simulated", "err_%", "tol_%", "verdict"]


@dataclass
class Side:
    """One mode of one case, measured or simulated."""

    ttft_s: list[float]
    completion_s: float
    preemptions: int
    unfinished: int
    busy_s: float = 0.0  # engine steps (measured: the worker's own clock)
    steps: int = 0
    factor: float = 1.0  # engine slow-down applied (cross-pass calibration)
    #: each TTFT's legs by query id (measured: eval.replay_query.LEGS; simulated:
    #: in/worker/out)
    legs_s: dict[str, dict[str, float]] = field(default_factory=dict)


def compare(case: str, meas: dict[str, Side], sim: dict[str, Side]) -> list[dict[str, Any]]:
    """One row per (mode, metric): measured, simulated, relative error, verdict."""
    from eval.metrics import percentiles

    rows: list[dict[str, Any]] = []
    for mode in ("non-streaming", "streaming"):
        m, s = meas[mode], sim[mode]
        pm, ps = percentiles(m.ttft_s), percentiles(s.ttft_s)
        cells = [(k, pm[k], ps[k], TOL[k]) for k in ("p50", "p95", "p99")]
        cells.append(("completion", m.completion_s, s.completion_s, TOL["completion"]))
        for metric, a, b, tol in cells:
            err = (b - a) / a if a > 0 else math.nan
            ok = not math.isnan(err) and abs(err) <= tol and not (m.unfinished or s.unfinished)
            rows.append({"case": case, "mode": mode, "metric": metric, "measured": a,
                         "simulated": b, "err_%": 100 * err, "tol_%": 100 * tol,
                         "verdict": "pass" if ok else "FAIL"})  # fmt: skip
        # diagnostics, no tolerance: preemptions, and the engine's busy time and steps
        # (where a TTFT gap comes from: slower steps, or more of them)
        for metric, a, b in (("preemptions", m.preemptions, s.preemptions),
                             ("engine busy s", m.busy_s, s.busy_s), ("steps", m.steps, s.steps)):
            diag: float | None = 100 * (b - a) / a if a else None
            rows.append({"case": case, "mode": mode, "metric": metric, "measured": a,
                         "simulated": b, "err_%": diag, "tol_%": None, "verdict": "-"})  # fmt: skip
    return rows


def plot_cdfs(results: dict[str, dict[str, dict[str, Side]]], path: Path) -> Path:
    """A panel per case: TTFT CDF measured (solid) vs simulated (dashed), per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (case, sides) in zip(axes[0], results.items(), strict=True):
        for mode, colour in (("non-streaming", "tab:red"), ("streaming", "tab:blue")):
            for kind, style in (("measured", "-"), ("simulated", "--"), ("calibrated", ":")):
                if kind not in sides:
                    continue
                x = np.sort(np.asarray(sides[kind][mode].ttft_s, dtype=float))
                if x.size:
                    ax.step(np.maximum(x, 1e-4), np.arange(1, x.size + 1) / x.size, style,
                            color=colour, where="post", label=f"{mode} {kind}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("TTFT (s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("P[TTFT <= x]")
    axes[0][0].legend(fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
