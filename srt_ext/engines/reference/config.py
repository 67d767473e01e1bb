"""Llama architecture parameters read from a Hugging Face ``config.json``.

We parse the file ourselves instead of going through ``transformers.LlamaConfig``
because the engine must run under two transformers generations (the CI stack and
the GPU image): 4.x keeps ``rope_theta``/``rope_scaling`` at the top level, 5.x
moves them into ``rope_parameters``. Both spellings are accepted here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LLAMA_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM"}


@dataclass(frozen=True)
class LlamaArch:
    """The numbers a Llama forward needs; nothing else from config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> LlamaArch:
        archs = set(cfg.get("architectures") or ["LlamaForCausalLM"])
        if not archs & LLAMA_ARCHITECTURES and cfg.get("model_type") not in {"llama", "mistral"}:
            raise ValueError(f"not a Llama-architecture checkpoint: {sorted(archs)}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r} (Llama uses silu)")
        heads = int(cfg["num_attention_heads"])
        rope_params = dict(cfg.get("rope_parameters") or {})
        scaling = dict(cfg.get("rope_scaling") or {})
        if not scaling and rope_params.get("rope_type", "default") != "default":
            scaling = rope_params
        default_theta: float = rope_params.get("rope_theta", 10000.0)
        theta = cfg.get("rope_theta", default_theta)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> LlamaArch:
        with open(Path(model_dir) / "config.json") as f:
            return cls.from_dict(json.load(f))


def rope_inv_freq(arch: LlamaArch) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (float64) and the cos/sin scale, per rope type.

    Computed in float64 (Hugging Face uses float32) so the float64 reference
    path is float64 end to end; the values agree with HF's to float32 precision.
    """
    dim = arch.head_dim
    inv = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    s = arch.rope_scaling
    kind = s.get("rope_type", s.get("type", "default")) if s else "default"
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(s["factor"]), 1.0
    if kind == "llama3":
        factor = float(s["factor"])
        low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
        old_ctx = float(s.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ValueError(f"unsupported rope scaling {kind!r} (default, linear, llama3)")


def rope_table(arch: LlamaArch, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of positions [start, end), float64, [end - start, head_dim] (HF's
    half-split layout). Callers build the table in fixed-size pieces so a position's
    row never depends on how large a table was computed (vectorised vs scalar tails).
    """
    inv, scale = rope_inv_freq(arch)
    freqs = torch.arange(start, end, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale
