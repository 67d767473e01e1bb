"""The report of `stream2llm bench-cpu` (:mod:`eval.bench_cpu` measures): table and plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eval.bench_cpu import Row


def table(rows: list[Row], prefill_flops: Callable[[int], float], context: int) -> str:
    """Markdown tables of one run; ``prefill_flops(n)``: the model's FLOPs for n tokens."""
    out = [
        "| path | prefill chunk | wall s | CPU s | tokens/CPU-s | GFLOP/CPU-s "
        "| % of fp32 FLOP bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.kind == "prefill":
            gf = prefill_flops(r.size) / r.cpu_s / 1e9
            out.append(f"| {r.path} | {r.size} | {r.seconds:.2f} | {r.cpu_s:.2f} "
                       f"| {r.size / r.cpu_s:,.0f} | {gf:.1f} | {100 * r.frac:.0f} % |")  # fmt: skip
    out += [
        "",
        f"| path | decode batch (context {context}) | wall ms/step | CPU ms/step "
        "| read bound ms (own dtype) | x own bound | x fp32-weight bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.kind == "decode":
            out.append(f"| {r.path} | {r.size} | {1e3 * r.seconds:.1f} | {1e3 * r.cpu_s:.1f} "
                       f"| {1e3 * r.bound_s:.1f} | {r.cpu_s / r.bound_s:.2f} "
                       f"| {r.cpu_s / r.bound32_s:.2f} |")  # fmt: skip
    return "\n".join(out)


def plot(rows: list[Row], path: str) -> None:
    """Bars: % of bound per path and size, prefill and decode side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind in zip(axes, ("prefill", "decode"), strict=True):
        sel = [r for r in rows if r.kind == kind]
        paths = sorted({r.path for r in sel})
        sizes = sorted({r.size for r in sel})
        width = 0.8 / max(len(paths), 1)
        for i, p in enumerate(paths):
            vals = [next((100 * r.frac for r in sel if r.path == p and r.size == s), 0.0)
                    for s in sizes]  # fmt: skip
            ax.bar([j + i * width for j in range(len(sizes))], vals, width, label=p)
        ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(sizes))])
        ax.set_xticklabels([str(s) for s in sizes])
        target = 50 if kind == "prefill" else 50  # decode: 2x the read bound = 50 %
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_xlabel("chunk tokens" if kind == "prefill" else "decode batch")
        ax.set_ylabel(
            "% of bound" + (" (FLOP, fp32 GEMM)" if kind == "prefill" else " (read, own dtype)")
        )
        ax.set_title(kind)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
