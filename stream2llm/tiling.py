"""How an engine covers a step's rows with fixed-size tiles (dependency-free).

Shared by the CPU engine, which runs its dense ops and LM head on tiles of
probed sizes (srt_ext/engines/reference/tiles.py), and by the cost model, which counts
the tile calls a step will make (scheduler/step_model.py): one rule, so the
simulator prices exactly the calls the engine runs.
"""

from __future__ import annotations


def split_sizes(n: int, sizes: tuple[int, ...]) -> list[int]:
    """Cover ``n`` rows with tiles from ``sizes``: largest first, then the largest
    that fits, the tail padded up to the smallest size. Any row may land in any
    tile: the sized layout is only used where the probe showed that is harmless."""
    if n <= 0:
        return []
    order = sorted(sizes, reverse=True)
    out: list[int] = []
    while n > 0:
        fit = next((s for s in order if s <= n), order[-1])
        out.append(fit)
        n -= fit
    return out


def block_span(start: int, n: int, block: int) -> range:
    """The ``block``-position attention blocks that positions ``[start, start+n)``
    fall in (the CPU engine's sized attention runs one kernel call per block)."""
    return range(start // block, (start + n - 1) // block + 1) if n > 0 else range(0)
