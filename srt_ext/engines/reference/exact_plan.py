"""Choosing the exact path's layout: the start-up probes of a LlamaModel.

``probe_plan`` finds the tile sizes of the sized layout (float32): layer 0's
dense ops, the LM head and the attention kernel (at key lengths 64..4096) run
on m copies of one random row for each candidate m (probe.py), and only counts
where every row agrees are kept. ``check_rows_independent`` is the position
layout's probe (float64): the same token at every row index of a fixed tile.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from srt_ext.engines.reference.attention import attend
from srt_ext.engines.reference.llama import (
    DENSE_SIZES,
    LM_SIZES,
    SIZED_ATTN_BLOCK,
    ExactPlan,
    rms_norm,
)
from srt_ext.engines.reference.probe import common_sizes, consistent_sizes

if TYPE_CHECKING:
    from srt_ext.engines.reference.llama import LlamaModel

log = logging.getLogger(__name__)


def _rnd(model: LlamaModel, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(model.device, model.dtype)


@torch.no_grad()
def probe_plan(model: LlamaModel, want_sized: bool) -> ExactPlan:
    """Tile sizes for the sized layout, from probing this process's kernels
    (layer 0's ops, the LM head, attention); position layout if it fails."""
    threads = torch.get_num_threads()
    if not want_sized:
        return ExactPlan(None, None, None, threads)
    a, gen, ops = model.arch, torch.Generator().manual_seed(0), model.layers[0]
    x, at = _rnd(model, gen, a.hidden_size), _rnd(model, gen, a.num_heads, a.head_dim)

    def dense_op(m: int) -> list[torch.Tensor]:
        pos = torch.full((m,), 7, dtype=torch.int64, device=model.device)
        xs = x.expand(m, -1).contiguous()
        outs = list(model._pre(ops, xs, model.cos[pos], model.sin[pos]))
        return outs + [model._post(ops, xs, at.expand(m, -1, -1).contiguous())]

    def lm_op(m: int) -> list[torch.Tensor]:
        return [model.lm_head(rms_norm(x.expand(m, -1).contiguous(), model.w.norm, a.rms_norm_eps))]

    block, gs = SIZED_ATTN_BLOCK, a.group_size
    attn_candidates = tuple(sorted({*LM_SIZES[2:], *DENSE_SIZES[2:], gs * block}))
    attn_candidates = tuple(s for s in attn_candidates if s <= gs * block)
    q1 = _rnd(model, gen, a.num_kv_heads, 1, a.head_dim)
    # key lengths: a kernel may block its reduction differently past some length
    top = -(-model.cos.shape[0] // block) * block
    kv_lens = sorted({min(k * block, top) for k in (1, 3, 16, 64)})
    kvs = [
        (
            _rnd(model, gen, a.num_kv_heads, n, a.head_dim),
            _rnd(model, gen, a.num_kv_heads, a.head_dim, n),
        )
        for n in kv_lens
    ]

    def attn_op(m: int) -> list[torch.Tensor]:
        qt, outs = q1.expand(-1, m, -1).contiguous(), []
        for keys, values_t in kvs:
            n = keys.shape[1]
            pos = torch.full((m,), n - block // 2, dtype=torch.int64, device=model.device)
            o = attend(qt, pos, keys, values_t, model.scale, block, model.mm)
            outs.append(o.transpose(0, 1))
        return outs

    dense = common_sizes([consistent_sizes(dense_op, DENSE_SIZES)])
    lm = consistent_sizes(lm_op, LM_SIZES)
    attn = consistent_sizes(attn_op, attn_candidates)
    if not dense or dense[0] > 8 or not lm or lm[0] > 8 or not attn or attn[-1] < gs * block:
        log.warning(
            "exact path: kernels are not row-count invariant here (dense %s, lm %s, attn %s);"
            " using the slower position layout", dense, lm, attn,
        )  # fmt: skip
        return ExactPlan(None, None, None, threads)
    return ExactPlan(dense, lm, attn, threads)


@torch.no_grad()
def check_rows_independent(model: LlamaModel) -> bool:
    """Position layout: does a tile op's result for a row depend on the
    row's index in the tile? (Same fixed shape, so never on the other rows'
    contents.) If all rows agree, tiles are filled densely; else p % tile."""
    a = model.arch
    gen = torch.Generator().manual_seed(0)
    x, attn, ops = (
        _rnd(model, gen, a.hidden_size),
        _rnd(model, gen, a.num_heads, a.head_dim),
        model.layers[0],
    )
    seen: list[list[torch.Tensor]] = []
    for tile in (model.tile_rows, model.lm_tile_rows):
        for r in range(tile):
            xs, at = (
                _rnd(model, gen, tile, a.hidden_size),
                _rnd(model, gen, tile, a.num_heads, a.head_dim),
            )
            pos = torch.randint(0, model.cos.shape[0], (tile,), generator=gen).to(model.device)
            xs[r], at[r], pos[r] = x, attn, 7
            if tile == model.tile_rows:
                outs = [t[r] for t in model._pre(ops, xs, model.cos[pos], model.sin[pos])]
                outs.append(model._post(ops, xs, at)[r])
            else:
                outs = [model.lm_head(rms_norm(xs, model.w.norm, a.rms_norm_eps))[r]]
            if r and not all(torch.equal(o, p) for o, p in zip(outs, seen[-1], strict=True)):
                return False
            seen.append(outs)
        seen.clear()
    return True


@torch.no_grad()
def warm_attention(model: LlamaModel, max_len: int) -> int:
    """Run the sized attention's kernel once at every shape a step can ask for
    (each probed row count x each key length, one 64-position block at a time,
    up to ``max_len``); returns the number of calls.

    Why: oneDNN builds a kernel ("primitive") the first time it sees a shape, and
    a served step meets new key lengths as contexts grow: the first steps of a
    server ran ~15% slower than the same steps repeated (measured, tiny model,
    docs/performance.md). Paying that at start-up, as GPU engines capture their
    CUDA graphs, makes a step's cost a function of its shape alone, which is what
    the cost model's profile measures.
    """
    plan = model.plan
    if plan.attn is None:
        return 0
    a, block = model.arch, SIZED_ATTN_BLOCK
    calls = 0
    for b in range(-(-max_len // block)):
        length = (b + 1) * block
        keys = torch.zeros(a.num_kv_heads, length, a.head_dim, dtype=model.dtype, device=model.device)
        values_t = torch.zeros(a.num_kv_heads, a.head_dim, length, dtype=model.dtype,
                               device=model.device)  # fmt: skip
        for m in plan.attn:
            qt = torch.zeros(a.num_kv_heads, m, a.head_dim, dtype=model.dtype, device=model.device)
            pos = torch.full((m,), length - 1, dtype=torch.int64, device=model.device)
            attend(qt, pos, keys, values_t, model.scale, block, model.mm)
            calls += 1
    return calls
