"""A PyTorch Llama forward whose KV cache is SGLang's ``MHATokenToKVPool``.

Only the model forward is ours: K/V of new tokens are written straight into the
pool's per-layer ``k_buffer``/``v_buffer`` at the slots SGLang's allocator handed
out, and attention reads a request's prefix back by slot index. The same code
serves two layouts (see tiles.py): the exact layout (fixed-shape tiles, CPU
float64, bit-identical under any chunking/batching) and the fast layout (one
packed matrix, GPU bf16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from srt_ext.engine.attention import batched_decode_attention, blocked_attention, sdpa_attention
from srt_ext.engine.config import LlamaArch, rope_table
from srt_ext.engine.tiles import RowLayout, pack_by_position, pack_dense, pack_fixed
from srt_ext.engine.weights import LayerWeights, load_weights

ROPE_CHUNK = 128  # table rows built per op, so a row never depends on the table size


@dataclass
class Span:
    """One request's share of a packed step."""

    offset: int  # index of its first token in the packed step
    n: int  # new tokens
    start: int  # position of its first new token
    all_slots: torch.Tensor  # KV slots of positions [0, start + n)


@dataclass
class StepBatch:
    token_ids: torch.Tensor  # [n] packed new tokens
    positions: list[int]  # [n]
    new_slots: torch.Tensor  # [n]
    spans: list[Span]
    sample_index: list[int]  # packed token indices whose next-token logits are wanted


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm: half-precision inputs are normalised in float32."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var = xf.pow(2).mean(-1, keepdim=True)
    return weight * (xf * torch.rsqrt(var + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [rows, heads, d]; cos/sin: [rows, d] in the rope dtype (>= float32)."""
    xf = x.to(cos.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


class LlamaModel:
    """Weights + forward. Stateless between calls: all KV state is in the pool."""

    def __init__(
        self,
        model_dir: str | Path,
        device: torch.device | str,
        dtype: torch.dtype,
        exact: bool,
        max_positions: int,
        tile_rows: int = 16,
        attn_block: int = 16,
        lm_tile_rows: int = 8,
    ) -> None:
        self.arch = LlamaArch.from_dir(model_dir)
        self.device = torch.device(device)
        self.dtype = dtype
        self.exact = exact
        self.tile_rows, self.attn_block, self.lm_tile_rows = tile_rows, attn_block, lm_tile_rows
        self.w = load_weights(model_dir, self.arch, self.device, dtype)
        self.scale = self.arch.head_dim**-0.5
        rope_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        parts = [
            rope_table(self.arch, start=i, end=i + ROPE_CHUNK)
            for i in range(0, max_positions, ROPE_CHUNK)
        ]
        self.cos = torch.cat([c for c, _ in parts])[:max_positions].to(self.device, rope_dtype)
        self.sin = torch.cat([s for _, s in parts])[:max_positions].to(self.device, rope_dtype)
        self.rows_independent = False
        if exact:
            self.rows_independent = self.check_rows_independent()

    def _layout(self, positions: list[int], tile: int) -> RowLayout:
        if not self.exact:
            return pack_dense(len(positions), self.device)
        if self.rows_independent:
            return pack_fixed(len(positions), tile, self.device)
        return pack_by_position(positions, tile, self.device)

    def _pre(self, lw: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Tile before attention: norm, fused q/k/v projection, rope."""
        a = self.arch
        nh, nkv, d = a.num_heads, a.num_kv_heads, a.head_dim
        qkv = F.linear(rms_norm(x, lw.in_norm, a.rms_norm_eps), lw.qkv, lw.qkv_bias)
        tq, tk, tv = qkv.split([nh * d, nkv * d, nkv * d], dim=-1)
        q = apply_rope(tq.reshape(-1, nh, d), cos, sin)
        return q, apply_rope(tk.reshape(-1, nkv, d), cos, sin), tv.reshape(-1, nkv, d)

    def _post(self, lw: LayerWeights, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Tile after attention: output projection, residual, norm, SwiGLU MLP, residual."""
        a = self.arch
        x = x + F.linear(attn.reshape(x.shape[0], -1), lw.o, lw.o_bias)
        h = rms_norm(x, lw.post_norm, a.rms_norm_eps)
        gate, up = F.linear(h, lw.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, lw.down)

    @torch.no_grad()
    def check_rows_independent(self) -> bool:
        """Does a tile op's result for a row depend on the row's index in the tile?

        On a fixed shape it never depends on the other rows' contents (no op
        mixes rows), but a BLAS could treat edge rows differently. Probe it: the
        same token at every row index of layer 0's dense ops and the LM head.
        If all agree bit for bit, tiles may be filled densely (decode batches of
        equal-length requests share a tile); else rows go to p % tile.
        """
        a, w = self.arch, self.w
        gen = torch.Generator().manual_seed(0)

        def rnd(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(
                self.device, self.dtype
            )

        x, attn, lw = rnd(a.hidden_size), rnd(a.num_heads, a.head_dim), w.layers[0]
        seen: list[list[torch.Tensor]] = []
        for tile in (self.tile_rows, self.lm_tile_rows):
            for r in range(tile):
                xs, at = rnd(tile, a.hidden_size), rnd(tile, a.num_heads, a.head_dim)
                pos = torch.randint(0, self.cos.shape[0], (tile,), generator=gen).to(self.device)
                xs[r], at[r], pos[r] = x, attn, 7
                if tile == self.tile_rows:
                    outs = [t[r] for t in self._pre(lw, xs, self.cos[pos], self.sin[pos])]
                    outs.append(self._post(lw, xs, at)[r])
                else:
                    outs = [F.linear(rms_norm(xs, w.norm, a.rms_norm_eps), w.lm_head)[r]]
                if r and not all(torch.equal(o, p) for o, p in zip(outs, seen[-1], strict=True)):
                    return False
                seen.append(outs)
            seen.clear()
        return True

    @torch.no_grad()
    def forward(
        self, batch: StepBatch, k_bufs: list[torch.Tensor], v_bufs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Writes the new tokens' K/V into the pool; returns logits [len(sample_index), vocab]."""
        a, w = self.arch, self.w
        nh, nkv, d = a.num_heads, a.num_kv_heads, a.head_dim
        layout = self._layout(batch.positions, self.tile_rows)
        rows, n_rows = layout.rows, layout.n_rows
        x = torch.zeros(n_rows, a.hidden_size, dtype=self.dtype, device=self.device)
        x[rows] = w.embed[batch.token_ids]
        pos = torch.zeros(n_rows, dtype=torch.int64, device=self.device)
        pos[rows] = torch.tensor(batch.positions, dtype=torch.int64, device=self.device)
        cos, sin = self.cos[pos], self.sin[pos]
        q = torch.empty(n_rows, nh, d, dtype=self.dtype, device=self.device)
        k = torch.empty(n_rows, nkv, d, dtype=self.dtype, device=self.device)
        v = torch.empty_like(k)
        for li, lw in enumerate(w.layers):
            for sl in layout.slices():
                q[sl], k[sl], v[sl] = self._pre(lw, x[sl], cos[sl], sin[sl])
            k_bufs[li][batch.new_slots] = k[rows]
            v_bufs[li][batch.new_slots] = v[rows]
            attn = self._attention(batch, rows, q, k_bufs[li], v_bufs[li])
            for sl in layout.slices():
                x[sl] = self._post(lw, x[sl], attn[sl])
        return self._logits(batch, rows, x, layout)

    def _attention(
        self,
        batch: StepBatch,
        rows: torch.Tensor,
        q: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
    ) -> torch.Tensor:
        out = torch.zeros_like(q)
        decode = [] if self.exact else [s for s in batch.spans if s.n == 1 and s.start > 0]
        batched = {id(s) for s in decode}
        if decode:
            r = rows[[s.offset for s in decode]]
            out[r] = batched_decode_attention(
                q[r], k_buf, v_buf, [s.all_slots for s in decode], self.scale
            )
        for s in batch.spans:
            if id(s) in batched:
                continue
            r = rows[s.offset : s.offset + s.n]
            keys, values = k_buf[s.all_slots], v_buf[s.all_slots]
            if self.exact:
                out[r] = blocked_attention(q[r], keys, values, s.start, self.scale, self.attn_block)
            else:
                out[r] = sdpa_attention(q[r], keys, values, s.start, self.scale)
        return out

    def _logits(
        self, batch: StepBatch, rows: torch.Tensor, x: torch.Tensor, layout: RowLayout
    ) -> torch.Tensor:
        a, w = self.arch, self.w
        if not batch.sample_index:
            return torch.empty(0, a.vocab_size, dtype=self.dtype, device=self.device)
        normed = torch.empty_like(x)
        for sl in layout.slices():
            normed[sl] = rms_norm(x[sl], w.norm, a.rms_norm_eps)
        picked = normed[rows[batch.sample_index]]
        lm = self._layout([batch.positions[i] for i in batch.sample_index], self.lm_tile_rows)
        h = torch.zeros(lm.n_rows, a.hidden_size, dtype=self.dtype, device=self.device)
        h[lm.rows] = picked
        logits = torch.empty(lm.n_rows, a.vocab_size, dtype=self.dtype, device=self.device)
        for sl in lm.slices():
            logits[sl] = F.linear(h[sl], w.lm_head)
        return logits[lm.rows]
