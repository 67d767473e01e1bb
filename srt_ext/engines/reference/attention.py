"""Attention over KV gathered from SGLang's pool: an exact path and a fast path.

Exact path (CPU reference): queries are grouped by ``block``-aligned position
blocks. Queries in block b attend over keys [0, (b+1)*block) (zero-padded, later
keys masked to -inf, so they contribute exact zeros), on tensors of a shape that
depends only on b, with the query at position p on row p % block. Every
reduction a query takes part in (q.k over head_dim, softmax over keys, p.v over
keys) therefore runs in the same kernel, on the same shape, at the same row,
whether the prompt arrived in one piece or in chunks: bit-identical outputs by
construction. The price is up to ``block`` padded query rows per step.

Sized path (CPU float32, the default there): the same key-length rule (a query
in block b sees exactly (b+1)*block keys, later ones masked), but no padded
query rows per block: the block's real query rows (queries x group heads) are
padded only up to the next of a few row counts that the engine's start-up probe
showed give every row the same bits at every count and row index (MKL here:
any count >= 4). So a query's q.k, softmax and p.v run in one kernel class on
shapes that depend only on its position, whoever else is in the block. The two
products go through the same 2-D kernel as the dense layers (oneDNN's linear,
~2x MKL's bmm here), one call per KV head.

Fast path (GPU, bf16): torch's fused scaled_dot_product_attention per prefill
item, and one padded batched call for all decode items (padding keys read
SGLang's dummy slot 0 and are masked out).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stream2llm.tiling import block_span


def blocked_attention(
    q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, start: int, scale: float, block: int
) -> torch.Tensor:
    """q: [n, heads, d] for positions start..start+n-1; k_all/v_all: [start+n, kv_heads, d]."""
    n, heads, d = q.shape
    length, kv_heads, _ = k_all.shape
    gs = heads // kv_heads
    padded = -(-length // block) * block
    kf = q.new_zeros(kv_heads, padded, d)
    vf = q.new_zeros(kv_heads, padded, d)
    kf[:, :length] = k_all.transpose(0, 1)
    vf[:, :length] = v_all.transpose(0, 1)
    out = q.new_empty(n, heads, d)
    offsets = torch.arange(block, device=q.device)
    for b in block_span(start, n, block):
        lo, hi = max(start, b * block), min(start + n, (b + 1) * block)
        kv_len = (b + 1) * block
        qt = q.new_zeros(kv_heads, gs, block, d)
        qt[:, :, lo - b * block : hi - b * block] = (
            q[lo - start : hi - start].view(hi - lo, kv_heads, gs, d).permute(1, 2, 0, 3)
        )
        keys = kf[:, :kv_len].contiguous()
        scores = torch.matmul(qt.view(kv_heads, gs * block, d), keys.transpose(1, 2)) * scale
        future = torch.arange(kv_len, device=q.device)[None, :] > (b * block + offsets)[:, None]
        scores = scores.view(kv_heads, gs, block, kv_len).masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(kv_heads, gs * block, kv_len)
        o = torch.matmul(probs, vf[:, :kv_len].contiguous()).view(kv_heads, gs, block, d)
        out[lo - start : hi - start] = (
            o[:, :, lo - b * block : hi - b * block].permute(2, 0, 1, 3).reshape(hi - lo, heads, d)
        )
    return out


MatmulNT = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (a, b) -> a @ b.T, 2-D


def attend(
    qt: torch.Tensor,
    row_pos: torch.Tensor,
    keys: torch.Tensor,
    values_t: torch.Tensor,
    scale: float,
    tail: int,
    mm: MatmulNT,
) -> torch.Tensor:
    """qt: [kv_heads, m, d] query rows at positions row_pos [m]; keys [kv_heads, L, d]
    and values_t [kv_heads, d, L] (L a function of the block only). Only the last
    ``tail`` keys can lie after a row's position, so only they are masked.
    Returns [kv_heads, m, d]."""
    length = keys.shape[1]
    future = torch.arange(length - tail, length, device=qt.device)[None, :] > row_pos[:, None]
    outs = []
    for h in range(qt.shape[0]):
        scores = mm(qt[h], keys[h]) * scale
        scores[:, length - tail :].masked_fill_(future, float("-inf"))
        outs.append(mm(torch.softmax(scores, dim=-1), values_t[h]))
    return torch.stack(outs)


def pad_rows(rows: int, sizes: tuple[int, ...]) -> int:
    """The smallest probed row count that holds ``rows``."""
    for s in sizes:
        if s >= rows:
            return s
    raise ValueError(f"{rows} attention rows exceed the probed sizes {sizes}")


def sized_attention(
    q: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    start: int,
    scale: float,
    block: int,
    row_sizes: tuple[int, ...],
    mm: MatmulNT,
) -> torch.Tensor:
    """Shapes as in blocked_attention; ``row_sizes`` sorted, max >= group * block;
    ``mm`` the probed 2-D kernel (oneDNN linear on CPU float32)."""
    n, heads, d = q.shape
    length, kv_heads, _ = k_all.shape
    gs = heads // kv_heads
    padded = -(-length // block) * block
    kf = q.new_zeros(kv_heads, padded, d)
    vt = q.new_zeros(kv_heads, d, padded)
    kf[:, :length] = k_all.transpose(0, 1)
    vt[:, :, :length] = v_all.permute(1, 2, 0)
    out = q.new_empty(n, heads, d)
    for b in block_span(start, n, block):
        lo, hi = max(start, b * block), min(start + n, (b + 1) * block)
        rows = (hi - lo) * gs
        m = pad_rows(rows, row_sizes)
        qt = q.new_zeros(kv_heads, m, d)
        qt[:, :rows] = (
            q[lo - start : hi - start]
            .view(hi - lo, kv_heads, gs, d)
            .transpose(0, 1)
            .reshape(kv_heads, rows, d)
        )
        row_pos = torch.full((m,), lo, dtype=torch.int64, device=q.device)
        row_pos[:rows] = torch.arange(lo, hi, device=q.device).repeat_interleave(gs)
        kv_len = (b + 1) * block
        values_t = vt[:, :, :kv_len].contiguous()
        o = attend(qt, row_pos, kf[:, :kv_len], values_t, scale, block, mm)
        out[lo - start : hi - start] = (
            o[:, :rows].reshape(kv_heads, hi - lo, gs, d).transpose(0, 1).reshape(hi - lo, heads, d)
        )
    return out


def sdpa_attention(
    q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, start: int, scale: float
) -> torch.Tensor:
    """One prefill item through torch's fused kernels. Shapes as in blocked_attention."""
    n, heads, _ = q.shape
    length, kv_heads, _ = k_all.shape
    gs = heads // kv_heads
    qh = q.transpose(0, 1).unsqueeze(0)
    kh = k_all.transpose(0, 1).repeat_interleave(gs, dim=0).unsqueeze(0)
    vh = v_all.transpose(0, 1).repeat_interleave(gs, dim=0).unsqueeze(0)
    if start == 0:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=n > 1, scale=scale)
    else:
        pos = start + torch.arange(n, device=q.device)
        mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)


def batched_decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    slot_rows: list[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """q: [B, heads, d], one new token per request; slot_rows[i]: all its KV slots
    (prefix + the new token). Keys are padded with slot 0 and masked."""
    bsz, heads, d = q.shape
    kv_heads = k_buf.shape[1]
    gs = heads // kv_heads
    longest = max(int(s.numel()) for s in slot_rows)
    slots = torch.zeros(bsz, longest, dtype=torch.int64, device=q.device)
    valid = torch.zeros(bsz, longest, dtype=torch.bool, device=q.device)
    for i, s in enumerate(slot_rows):
        slots[i, : s.numel()] = s
        valid[i, : s.numel()] = True
    k = k_buf[slots].permute(0, 2, 1, 3).repeat_interleave(gs, dim=1)  # [B, heads, L, d]
    v = v_buf[slots].permute(0, 2, 1, 3).repeat_interleave(gs, dim=1)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=valid[:, None, None, :], scale=scale
    )
    return out[:, :, 0]
