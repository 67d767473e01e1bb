"""Row layouts for the dense part of a forward step.

Two exact layouts exist; the engine picks one per dtype after probing the
machine's kernels (see probe.py):

* **sized tiles** (float32 default): a kernel class where a row's result is
  provably (probed) the same at every tile size in a small set and at every row
  index. Tokens then fill tiles densely, the step's rows split greedily into
  sizes from the set (big tiles for prefill, small for decode), padding at most
  ``min(sizes) - 1`` rows per step. No row's bits depend on its neighbours.
* **position tiles** (float64, and the fallback when the probe fails): the
  original scheme, described next.

Why tiles: BLAS kernels (MKL measured here) give a row of ``x @ W.T`` a result
that depends on the number of rows M and on the row's index inside the batch
(different blocking and edge kernels), so the same token computed in a chunk of
5 or of 64 differs in the last bits. With the shape fixed, a row's result no
longer depends on the *contents* of the other rows. The exact layout therefore
runs every dense op on tiles of exactly ``tile_rows`` rows and puts the token at
position ``p`` on row ``p % tile_rows`` of some tile: the op a token goes
through, its shape and the row it sits on are functions of its position alone,
never of how the input was chunked or what else is batched with it.

``pack_by_position`` finds the fewest tiles for that rule: the k-th token that
wants row r goes to tile k, so the tile count is the largest collision count.
When the engine's start-up probe shows that a row's index inside a fixed-shape
tile does not change its result on this machine (true for MKL here), tokens
fill tiles densely instead (``pack_fixed``): same shapes, fewer tiles when many
requests sit at the same position (batched decode of equal-length prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stream2llm.tiling import split_sizes


@dataclass
class RowLayout:
    """Where each packed token lives in a [n_rows, hidden] activation matrix."""

    rows: torch.Tensor  # [n_tokens] row index of each token
    n_rows: int
    tile: int  # rows per dense op (uniform layouts); n_rows is a multiple of it
    sizes: list[int] | None = None  # rows of each dense op, in order (sized layout)

    def slices(self) -> list[slice]:
        if self.sizes is None:
            return [slice(i, i + self.tile) for i in range(0, self.n_rows, self.tile)]
        out, at = [], 0
        for n in self.sizes:
            out.append(slice(at, at + n))
            at += n
        return out


def pack_sized(n_tokens: int, sizes: tuple[int, ...], device: torch.device) -> RowLayout:
    """Batch-invariant layout: tokens in order, tiles of probed sizes."""
    tiles = split_sizes(n_tokens, sizes)
    return RowLayout(
        rows=torch.arange(n_tokens, dtype=torch.int64, device=device),
        n_rows=sum(tiles),
        tile=max(tiles, default=1),
        sizes=tiles,
    )


def pack_by_position(positions: list[int], tile_rows: int, device: torch.device) -> RowLayout:
    """Exact layout: token at position p on row p % tile_rows of the first free tile."""
    used: dict[int, int] = {}
    rows = []
    for p in positions:
        r = p % tile_rows
        k = used.get(r, 0)
        used[r] = k + 1
        rows.append(k * tile_rows + r)
    n_tiles = max(used.values(), default=0)
    return RowLayout(
        rows=torch.tensor(rows, dtype=torch.int64, device=device),
        n_rows=n_tiles * tile_rows,
        tile=tile_rows,
    )


def pack_fixed(n_tokens: int, tile_rows: int, device: torch.device) -> RowLayout:
    """Exact layout where a row's index in a tile provably does not matter
    (LlamaModel.check_rows_independent): tokens fill fixed-shape tiles in order."""
    return RowLayout(
        rows=torch.arange(n_tokens, dtype=torch.int64, device=device),
        n_rows=-(-n_tokens // tile_rows) * tile_rows,
        tile=tile_rows,
    )


def pack_dense(n_tokens: int, device: torch.device) -> RowLayout:
    """Fast layout: one matrix with every token, in order (GPU / non-exact path)."""
    return RowLayout(
        rows=torch.arange(n_tokens, dtype=torch.int64, device=device),
        n_rows=n_tokens,
        tile=max(n_tokens, 1),
    )
