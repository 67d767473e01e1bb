"""TTFT percentiles, speedup ratios, plain-text tables and the results-JSON row schema.

`stream2llm sim` and `stream2llm replay` both emit rows from result_row(), so a simulated
and a measured run can be compared field by field (docs/contracts.md, issue 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

PERCENTILE_KEYS = ("p50", "p95", "p99", "p999", "mean")
_LEVELS = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
PREEMPTION_KINDS = ("recompute", "swap")


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """P50/P95/P99/P99.9 and mean (linear interpolation); NaN for an empty sample, so a
    run that produced no tokens shows up as missing rather than as a fast zero."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {k: math.nan for k in PERCENTILE_KEYS}
    out = {k: float(np.percentile(arr, q)) for k, q in _LEVELS.items()}
    out["mean"] = float(arr.mean())
    return out


def speedups(baseline: Mapping[str, float], scheduler: Mapping[str, float]) -> dict[str, float]:
    """baseline / scheduler per percentile (the paper's ratio: > 1 means the scheduler is
    faster). NaN where either side is missing or the scheduler value is zero."""
    out = {}
    for k in PERCENTILE_KEYS:
        b, s = baseline.get(k, math.nan), scheduler.get(k, math.nan)
        ok = not (math.isnan(b) or math.isnan(s)) and s > 0
        out[k] = b / s if ok else math.nan
    return out


def result_row(
    scheduler: str,
    streaming: bool,
    ttfts: Iterable[float],
    ttfts_from_arrival: Iterable[float],
    completion_time_s: float,
    preemptions: Mapping[str, int] | None = None,
    tokens_invalidated: int = 0,
) -> dict[str, object]:
    """One entry of the results JSON's "results" list.

    ``ttfts`` are measured from when the final chunk is sent (the paper's definition);
    ``ttfts_from_arrival`` from the query's arrival, which also shows retrieval time.
    """
    pre = dict(preemptions or {})
    unknown = set(pre) - set(PREEMPTION_KINDS)
    if unknown:
        raise ValueError(f"unknown preemption kinds {sorted(unknown)}")
    return {
        "scheduler": scheduler,
        "streaming": bool(streaming),
        "ttft_s": percentiles(ttfts),
        "ttft_from_arrival_s": percentiles(ttfts_from_arrival),
        "completion_time_s": float(completion_time_s),
        "preemptions": {k: int(pre.get(k, 0)) for k in PREEMPTION_KINDS},
        "tokens_invalidated": int(tokens_invalidated),
    }


def _cell(v: object) -> str:
    if v is None or isinstance(v, (bool, str)):
        return "-" if v is None else str(v)
    if isinstance(v, (int, float)):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return str(int(v)) if float(v).is_integer() else f"{v:.4g}"
    return str(v)


def format_table(
    rows: Sequence[Mapping[str, object] | Sequence[object]], columns: Sequence[str]
) -> str:
    """Plain aligned text (no extra dependency): text left-aligned, numbers right-aligned.
    Rows are mappings keyed by column name or sequences in column order."""
    cells = [list(columns)]
    numeric = [True] * len(columns)
    for r in rows:
        vals = [r.get(c) for c in columns] if isinstance(r, Mapping) else list(r)
        if len(vals) != len(columns):
            raise ValueError(f"row has {len(vals)} cells for {len(columns)} columns")
        for i, v in enumerate(vals):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                numeric[i] = numeric[i] and v in (None, "-")
        cells.append([_cell(v) for v in vals])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
