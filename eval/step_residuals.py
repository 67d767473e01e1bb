"""Where the step model misses: each logged worker step against its prediction.

    STREAM2LLM_STEP_LOG=steps.jsonl stream2llm serve ...   (or stream2llm validate)
    python -m eval.step_residuals steps.jsonl --profile PROFILE.json

The worker writes one JSON line per step (srt_ext/worker/core.py): the items it
ran as ``[start, n, sample]``, the forward's seconds and the whole step's. This
groups steps by shape and prints measured vs predicted forward time and the
per-step overhead besides the forward, so a validation gap can be traced to the
term that causes it rather than absorbed into a tolerance. The prediction includes
the profile's idle penalty for the gap since the previous logged step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def shape(items: list[list[int]]) -> str:
    """A coarse class of step: how many items, and whether they decode or prefill."""
    dec = sum(1 for _, n, _ in items if n == 1)
    pre = len(items) - dec
    toks = sum(n for _, n, _ in items)
    size = "<=64" if toks <= 64 else "<=256" if toks <= 256 else ">256"
    return f"{pre}p+{min(dec, 9)}d tok{size}" if pre <= 3 else f">3p+{min(dec, 9)}d tok{size}"


def load_steps(path: Path) -> list[dict[str, Any]]:
    """The worker's step log, one dict per step."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def predicted(rows: list[dict[str, Any]], cm: Any) -> list[float]:
    """Each logged step's forward as the cost model prices it, with the idle penalty
    for the gap since the previous logged step."""
    out, last_end = [], None
    for r in rows:
        items = [(int(st), int(n)) for st, n, _ in r["items"]]
        samples = sum(int(s) for *_, s in r["items"])
        start = r["t"] - r["wall_s"]
        gap = start - last_end if last_end is not None else float("inf")
        last_end = r["t"]
        out.append(cm.step_s(items, samples) + cm.sampled_s(samples) + cm.idle_s(gap))
    return out


def totals(rows: list[dict[str, Any]], cm: Any) -> tuple[float, float, int]:
    """(measured forward seconds, predicted, steps)."""
    return sum(r["forward_s"] for r in rows), sum(predicted(rows, cm)), len(rows)


def residuals(rows: list[dict[str, Any]], cm: Any) -> list[dict[str, Any]]:
    groups: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for r, fwd_pred in zip(rows, predicted(rows, cm), strict=True):
        groups[shape(r["items"])].append((r["forward_s"], fwd_pred, r["wall_s"] - r["forward_s"],
                                          cm.fixed.step_s))  # fmt: skip
    out = []
    for key, v in sorted(groups.items(), key=lambda kv: -sum(x[0] for x in kv[1])):
        meas = sum(x[0] for x in v)
        pred = sum(x[1] for x in v)
        out.append({"shape": key, "steps": len(v), "fwd measured s": round(meas, 3),
                    "fwd predicted s": round(pred, 3), "ratio": round(meas / pred, 2) if pred else None,
                    "overhead ms (median)": round(1e3 * statistics.median(x[2] for x in v), 2),
                    "step_s ms": round(1e3 * v[0][3], 2)})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    from eval.metrics import format_table
    from scheduler.cost_model import CostModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", help="the worker's step log (JSON lines)")
    ap.add_argument("--profile", required=True, help="profile JSON (or name) to predict with")
    a = ap.parse_args(argv)
    rows = load_steps(Path(a.log))
    cm = CostModel.load(a.profile)
    table = residuals(rows, cm)
    cols = list(table[0]) if table else []
    print(format_table(table, cols))
    meas = sum(r["forward_s"] for r in rows)
    pred = sum(t["fwd predicted s"] for t in table)
    wall = sum(r["wall_s"] for r in rows)
    print(f"{len(rows)} steps: forward {meas:.3f} s measured vs {pred:.3f} s predicted; "
          f"whole steps {wall:.3f} s (overhead {wall - meas:.3f} s, model {len(rows) * cm.fixed.step_s:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
