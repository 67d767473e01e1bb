"""Figures for sim/replay results and the demo: TTFT CCDFs and a per-request timeline.

matplotlib with the Agg backend, so plots render on headless machines (CI, GPU hosts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

EVENT_KINDS = ("chunk", "prefill", "first_token", "final")
_STYLE = {  # kind -> (marker, colour, label)
    "chunk": ("|", "tab:blue", "chunk arrives"),
    "final": ("|", "tab:red", "final chunk"),
    "first_token": ("*", "tab:green", "first token"),
}


def plot_ttft_ccdf(
    results_by_label: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "TTFT CCDF",
) -> Path:
    """One CCDF curve (P[TTFT > x]) per scheduler on log-x/log-y axes: the tail, where the
    schedulers differ most (P99, P99.9), stays readable. Non-finite values are dropped."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, values in results_by_label.items():
        x = np.sort(np.asarray([v for v in values if np.isfinite(v)], dtype=float))
        if x.size == 0:
            continue
        ccdf = 1.0 - np.arange(x.size) / x.size  # P[X >= x_i], so the last point is 1/n
        ax.step(np.maximum(x, 1e-6), ccdf, where="post", label=f"{label} (n={x.size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("P[TTFT > x]")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline(
    events: Sequence[Mapping[str, object]], path: str | Path, title: str = "Request timeline"
) -> Path:
    """One row per request id: chunk arrivals as ticks, prefill passes as bars (width is
    drawn from the next event of the row or a minimum, height scaled by tokens), and the
    first token as a star — shows prefill overlapping retrieval for the demo.

    Events: ``{"t": s, "kind": "chunk"|"prefill"|"first_token"|"final", "rid", "tokens"}``;
    a prefill may carry ``"dur"`` (seconds) for an exact bar width.
    """
    bad = {str(e.get("kind")) for e in events} - set(EVENT_KINDS)
    if bad:
        raise ValueError(f"unknown event kinds {sorted(bad)}; expected {EVENT_KINDS}")
    rids = list(dict.fromkeys(str(e["rid"]) for e in events))
    row = {rid: i for i, rid in enumerate(rids)}
    times = [float(e["t"]) for e in events]  # type: ignore[arg-type]
    span = (max(times) - min(times)) if times else 1.0
    min_w = max(span, 1e-3) / 200
    max_tokens = max([int(e.get("tokens", 0) or 0) for e in events] + [1])  # type: ignore[call-overload]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(len(rids), 1)))
    seen: set[str] = set()
    for e in sorted(events, key=lambda e: float(e["t"])):  # type: ignore[arg-type]
        kind, y, t = str(e["kind"]), row[str(e["rid"])], float(e["t"])  # type: ignore[arg-type]
        tokens = int(e.get("tokens", 0) or 0)  # type: ignore[call-overload]
        if kind == "prefill":
            width = float(e.get("dur", min_w) or min_w)  # type: ignore[arg-type]
            h = 0.15 + 0.5 * tokens / max_tokens
            lab = None if "prefill" in seen else "prefill pass"
            ax.barh(y, width, left=t, height=h, color="tab:orange", alpha=0.7, label=lab)
        else:
            marker, colour, label = _STYLE[kind]
            size = 200 if marker == "|" else 140
            lab = None if kind in seen else label
            ax.scatter([t], [y], marker=marker, s=size, color=colour, label=lab, zorder=3)
        seen.add(kind)
    ax.set_yticks(range(len(rids)), rids)
    ax.set_ylim(-0.6, len(rids) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    if seen:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
