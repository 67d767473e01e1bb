"""Start-up probes: which row counts give a row the same bits in this process.

Why: a GEMM kernel may pick a different code path by row count (gemv for one
row, edge kernels for tail rows, another split across threads), so the same
token computed in a chunk of 5 or of 64 can differ in the last bits. The exact
layouts only use row counts that a probe has shown to be interchangeable, at
the thread count the engine runs with. The probe runs the real op on ``m``
copies of one random row for every candidate ``m``: every output row must equal
every other, at every ``m`` (the computation order of a kernel depends on shapes,
never on the values, so one random row decides it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

RowOp = Callable[[int], Sequence[torch.Tensor]]  # m -> outputs with m leading rows


def _rows_agree(outs: Sequence[torch.Tensor]) -> bool:
    return all(bool((t == t[:1]).all()) for t in outs)


def consistent_sizes(op: RowOp, sizes: Sequence[int]) -> tuple[int, ...]:
    """The largest run of ``sizes`` (from the biggest down) whose rows all give
    the bits of the biggest size's first row; () if even that one disagrees."""
    order = sorted(set(sizes), reverse=True)
    ref: list[torch.Tensor] | None = None
    keep: list[int] = []
    for m in order:
        outs = op(m)
        first = [t[0] for t in outs]
        if not _rows_agree(outs):
            break
        if ref is None:
            ref = first
        elif not all(torch.equal(a, b) for a, b in zip(first, ref, strict=True)):
            break
        keep.append(m)
    return tuple(sorted(keep))


def common_sizes(found: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Sizes every probed op accepts."""
    if not found:
        return ()
    common = set(found[0])
    for f in found[1:]:
        common &= set(f)
    return tuple(sorted(common))
