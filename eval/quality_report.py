"""Summaries, the accuracy-vs-waiting curve, table and plot for `stream2llm eval-quality`.

The curve: at chunk index ``c`` every record contributes its point ``min(c, n)``
(a question whose retrieval finished after ``n`` < ``c`` chunks already has its final
answer), so the last index is exactly final-context accuracy. Time is the mean, over
questions, of *chunk sent + first-token latency*: when the user would have seen the
first token had the model answered then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.metrics import format_table
from eval.quality import Record

SUMMARY_COLUMNS = ("retriever", "questions", "recall@k", "contains_acc", "token_f1",
                   "identical", "retrieval_s", "ttft_stream_s", "ttft_oneshot_s",
                   "input_tokens")  # fmt: skip
CURVE_COLUMNS = ("retriever", "chunk", "recall", "contains_acc", "token_f1",
                 "first_token_s", "answered_final", "right_here_wrong_final",
                 "wrong_here_right_final")  # fmt: skip


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarize(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per retriever: final-context scores, exactness and latency means."""
    rows = []
    for r in dict.fromkeys(x.retriever for x in records):
        rs = [x for x in records if x.retriever == r]
        rows.append({
            "retriever": r, "questions": len(rs),
            "recall@k": _mean([x.final.recall for x in rs]),
            "contains_acc": _mean([x.final.correct for x in rs]),
            "token_f1": _mean([x.final.f1 for x in rs]),
            "identical": _mean([x.same_output for x in rs]),
            "retrieval_s": _mean([x.retrieval_s for x in rs]),
            "ttft_stream_s": _mean([x.stream_ttft_s for x in rs]),
            "ttft_oneshot_s": _mean([x.oneshot_ttft_s for x in rs]),
            "input_tokens": _mean([x.input_tokens for x in rs]),
        })
    return rows


def curve(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per retriever and chunk index: recall, accuracy and first-token time of the
    answer given after that chunk (see the module docstring). Records without their
    curve points (``--no-curve``) only have the final point and are left out."""
    rows = []
    for r in dict.fromkeys(x.retriever for x in records):
        rs = [x for x in records if x.retriever == r and x.points[0].chunk == 1
              and len(x.points) == x.points[-1].chunk]
        for c in range(1, max((len(x.points) for x in rs), default=0) + 1):
            pts = [x.points[min(c, len(x.points)) - 1] for x in rs]
            rows.append({
                "retriever": r, "chunk": c,
                "recall": _mean([p.recall for p in pts]),
                "contains_acc": _mean([p.correct for p in pts]),
                "token_f1": _mean([p.f1 for p in pts]),
                "first_token_s": _mean([p.first_token_s for p in pts]),
                "answered_final": _mean([len(x.points) <= c for x in rs]),
                # questions whose answer flips between here and the final context
                "right_here_wrong_final": sum(p.correct and not x.final.correct
                                              for p, x in zip(pts, rs, strict=True)),
                "wrong_here_right_final": sum(x.final.correct and not p.correct
                                              for p, x in zip(pts, rs, strict=True)),
            })
    return rows


def tables(records: Sequence[Record]) -> str:
    """The two plain-text tables the command prints (and docs/quality.md quotes)."""
    return (format_table(summarize(records), SUMMARY_COLUMNS) + "\n\n"
            + format_table(curve(records), CURVE_COLUMNS))


def plot_curve(rows: Sequence[dict[str, Any]], path: str | Path,
               title: str = "Answer accuracy vs. waiting for more context") -> Path:  # fmt: skip
    """Accuracy (solid) and recall (dotted) against the chunk index, first-token time
    (dashed, right axis) on the same x: what each extra chunk costs and buys."""
    from eval.plots import _save, plt

    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    tx = ax.twinx()
    for i, r in enumerate(dict.fromkeys(x["retriever"] for x in rows)):
        pts = [x for x in rows if x["retriever"] == r]
        xs = [p["chunk"] for p in pts]
        colour = f"C{i}"
        ax.plot(xs, [p["contains_acc"] for p in pts], "-o", color=colour,
                label=f"{r}: accuracy (contains gold)")
        ax.plot(xs, [p["recall"] for p in pts], ":", color=colour, label=f"{r}: recall")
        tx.plot(xs, [p["first_token_s"] for p in pts], "--s", color=colour, alpha=0.6,
                label=f"{r}: first token (s)")
    ax.set_xticks(sorted({int(x["chunk"]) for x in rows}))
    ax.set_xlabel("answered after chunk (last = final context)")
    ax.set_ylabel("fraction of questions")
    ax.set_ylim(0, 1.02)
    tx.set_ylabel("first token since query start (s)")
    tx.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    lines = ax.get_lines() + tx.get_lines()
    ax.legend(lines, [str(ln.get_label()) for ln in lines], fontsize=7, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return _save(fig, path)
