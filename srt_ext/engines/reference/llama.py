"""A PyTorch Llama forward whose KV cache is SGLang's ``MHATokenToKVPool``.

Only the model forward is ours: K/V of new tokens are written straight into the
pool's per-layer ``k_buffer``/``v_buffer`` at the slots SGLang's allocator handed
out, and attention reads a request's prefix back by slot index. The same code
serves three layouts (see tiles.py): two exact ones, bit-identical under any
chunking/batching/preemption (sized tiles: CPU float32, probed row counts,
oneDNN-packed weights; position tiles: CPU float64, fixed 16-row tiles) and the
fast layout (one packed matrix, GPU bf16).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from srt_ext.engines.reference.attention import (
    batched_decode_attention,
    blocked_attention,
    sdpa_attention,
    sized_attention,
)
from srt_ext.engines.reference.config import LlamaArch, rope_table
from srt_ext.engines.reference.dense import (
    Linear,
    make_linear,
    mkl_mm,
    onednn_mm,
    onednn_packing_available,
)
from srt_ext.engines.reference.tiles import (
    RowLayout,
    pack_by_position,
    pack_dense,
    pack_fixed,
    pack_sized,
)
from srt_ext.engines.reference.weights import load_weights

ROPE_CHUNK = 128  # table rows built per op, so a row never depends on the table size
# sized layout candidates: dense tiles (prefill rows fill the big ones, decode the
# small ones), LM-head tiles (one row per sampling request) and attention row counts
DENSE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
LM_SIZES = (1, 2, 4, 8, 16, 32, 64)
SIZED_ATTN_BLOCK = 64


@dataclass
class LayerOps:
    """One decoder layer as the forward applies it (weights possibly packed)."""

    in_norm: torch.Tensor
    qkv: Linear
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


@dataclass
class ExactPlan:
    """What the exact path runs on: the tile sizes the probe accepted (sized
    layout) or None (position layout), at a fixed torch thread count."""

    dense: tuple[int, ...] | None
    lm: tuple[int, ...] | None
    attn: tuple[int, ...] | None
    threads: int

    @property
    def sized(self) -> bool:
        return self.dense is not None


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
    """Weights + forward. Stateless between calls: all KV state is in the pool.

    ``sized`` (exact CPU only): None = float32 -> sized layout, else position
    layout; True forces an attempt at the sized layout, False the position one.
    """

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
        sized: bool | None = None,
    ) -> None:
        self.arch = LlamaArch.from_dir(model_dir)
        self.device = torch.device(device)
        self.dtype = dtype
        self.exact = exact
        self.tile_rows, self.attn_block, self.lm_tile_rows = tile_rows, attn_block, lm_tile_rows
        self.w = load_weights(model_dir, self.arch, self.device, dtype)
        want_sized = exact and (dtype == torch.float32 if sized is None else sized)
        packed = want_sized and onednn_packing_available(self.device, dtype)
        self.packed = packed
        self.mm = onednn_mm if packed else mkl_mm  # the sized attention's 2-D kernel
        self.layers = [
            LayerOps(
                lw.in_norm,
                make_linear(lw.qkv, lw.qkv_bias, packed),
                make_linear(lw.o, lw.o_bias, packed),
                lw.post_norm,
                make_linear(lw.gate_up, None, packed),
                make_linear(lw.down, None, packed),
            )
            for lw in self.w.layers
        ]
        self.lm_head = make_linear(self.w.lm_head, None, packed)
        if packed:  # the packed copies replace the dense layer weights
            self.w = replace(self.w, layers=[])
        self.scale = self.arch.head_dim**-0.5
        rope_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        parts = [
            rope_table(self.arch, start=i, end=i + ROPE_CHUNK)
            for i in range(0, max_positions, ROPE_CHUNK)
        ]
        self.cos = torch.cat([c for c, _ in parts])[:max_positions].to(self.device, rope_dtype)
        self.sin = torch.cat([s for _, s in parts])[:max_positions].to(self.device, rope_dtype)
        self.rows_independent = False
        self.plan = ExactPlan(None, None, None, torch.get_num_threads())
        if exact:
            self.plan = self.probe_plan(want_sized)
            if not self.plan.sized:
                self.rows_independent = self.check_rows_independent()

    # --- exact-path probes (exact_plan.py) --------------------------------------

    def probe_plan(self, want_sized: bool) -> ExactPlan:
        from srt_ext.engines.reference.exact_plan import probe_plan

        return probe_plan(self, want_sized)

    def check_rows_independent(self) -> bool:
        from srt_ext.engines.reference.exact_plan import check_rows_independent

        return check_rows_independent(self)

    # --- forward ---------------------------------------------------------------

    def _check_threads(self) -> None:
        if self.exact and torch.get_num_threads() != self.plan.threads:
            raise RuntimeError(
                f"the exact path was set up at {self.plan.threads} torch thread(s) and now runs "
                f"at {torch.get_num_threads()}: results are only promised at a fixed count"
            )

    def _layout(self, positions: list[int], lm: bool = False) -> RowLayout:
        if not self.exact:
            return pack_dense(len(positions), self.device)
        sizes = self.plan.lm if lm else self.plan.dense
        if sizes is not None:
            return pack_sized(len(positions), sizes, self.device)
        tile = self.lm_tile_rows if lm else self.tile_rows
        if self.rows_independent:
            return pack_fixed(len(positions), tile, self.device)
        return pack_by_position(positions, tile, self.device)

    def _pre(self, ops: LayerOps, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Tile before attention: norm, fused q/k/v projection, rope."""
        a = self.arch
        nh, nkv, d = a.num_heads, a.num_kv_heads, a.head_dim
        qkv = ops.qkv(rms_norm(x, ops.in_norm, a.rms_norm_eps))
        tq, tk, tv = qkv.split([nh * d, nkv * d, nkv * d], dim=-1)
        q = apply_rope(tq.reshape(-1, nh, d), cos, sin)
        return q, apply_rope(tk.reshape(-1, nkv, d), cos, sin), tv.reshape(-1, nkv, d)

    def _post(self, ops: LayerOps, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Tile after attention: output projection, residual, norm, SwiGLU MLP, residual."""
        a = self.arch
        x = x + ops.o(attn.reshape(x.shape[0], -1))
        h = rms_norm(x, ops.post_norm, a.rms_norm_eps)
        gate, up = ops.gate_up(h).chunk(2, dim=-1)
        return x + ops.down(F.silu(gate) * up)

    @torch.no_grad()
    def forward(
        self, batch: StepBatch, k_bufs: list[torch.Tensor], v_bufs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Writes the new tokens' K/V into the pool; returns logits [len(sample_index), vocab]."""
        self._check_threads()
        a, w = self.arch, self.w
        nh, nkv, d = a.num_heads, a.num_kv_heads, a.head_dim
        layout = self._layout(batch.positions)
        rows, n_rows = layout.rows, layout.n_rows
        x = torch.zeros(n_rows, a.hidden_size, dtype=self.dtype, device=self.device)
        x[rows] = w.embed[batch.token_ids]
        pos = torch.zeros(n_rows, dtype=torch.int64, device=self.device)
        pos[rows] = torch.tensor(batch.positions, dtype=torch.int64, device=self.device)
        cos, sin = self.cos[pos], self.sin[pos]
        q = torch.empty(n_rows, nh, d, dtype=self.dtype, device=self.device)
        k = torch.empty(n_rows, nkv, d, dtype=self.dtype, device=self.device)
        v = torch.empty_like(k)
        slices = layout.slices()
        for li, ops in enumerate(self.layers):
            for sl in slices:
                q[sl], k[sl], v[sl] = self._pre(ops, x[sl], cos[sl], sin[sl])
            k_bufs[li][batch.new_slots] = k[rows]
            v_bufs[li][batch.new_slots] = v[rows]
            attn = self._attention(batch, rows, q, k_bufs[li], v_bufs[li])
            for sl in slices:
                x[sl] = self._post(ops, x[sl], attn[sl])
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
            if self.plan.attn is not None:
                out[r] = sized_attention(
                    q[r],
                    keys,
                    values,
                    s.start,
                    self.scale,
                    SIZED_ATTN_BLOCK,
                    self.plan.attn,
                    self.mm,
                )
            elif self.exact:
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
        lm = self._layout([batch.positions[i] for i in batch.sample_index], lm=True)
        h = torch.zeros(lm.n_rows, a.hidden_size, dtype=self.dtype, device=self.device)
        h[lm.rows] = picked
        logits = torch.empty(lm.n_rows, a.vocab_size, dtype=self.dtype, device=self.device)
        for sl in lm.slices():
            logits[sl] = self.lm_head(h[sl])
        return logits[lm.rows]
