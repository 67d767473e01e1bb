"""Random-weight Llama checkpoints of a given shape, for benchmarks and tests.

Why: kernel timings and kernel code paths depend on the matrix shapes only, so
a seeded random checkpoint with SmolLM2-135M's exact shape times (and probes)
like the real model without needing it on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


def matmul_params(shape: dict[str, Any]) -> tuple[int, int]:
    """(parameters in the decoder layers' matmuls, parameters of the LM head)."""
    hid, inter = shape["hidden_size"], shape["intermediate_size"]
    nh, nkv, hd = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    per_layer = hid * (nh + 2 * nkv) * hd + nh * hd * hid + 3 * hid * inter
    return shape["num_hidden_layers"] * per_layer, shape["vocab_size"] * hid


def write_random_llama(dest: str | Path, shape: dict[str, Any], seed: int = 0) -> Path:
    """A loadable HF-style Llama directory (config.json + model.safetensors), no tokenizer."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    hid, inter = shape["hidden_size"], shape["intermediate_size"]
    nh, nkv, hd = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]

    def randn(*dims: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*dims, generator=g) * fan_in**-0.5

    w = {"model.embed_tokens.weight": torch.randn(shape["vocab_size"], hid, generator=g)}
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(hid)
        w[p + "post_attention_layernorm.weight"] = torch.ones(hid)
        for name, out in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{name}_proj.weight"] = randn(out, hid, fan_in=hid)
        w[p + "self_attn.o_proj.weight"] = randn(hid, nh * hd, fan_in=nh * hd)
        w[p + "mlp.gate_proj.weight"] = randn(inter, hid, fan_in=hid)
        w[p + "mlp.up_proj.weight"] = randn(inter, hid, fan_in=hid)
        w[p + "mlp.down_proj.weight"] = randn(hid, inter, fan_in=inter)
    w["model.norm.weight"] = torch.ones(hid)
    if not shape.get("tie_word_embeddings", False):
        w["lm_head.weight"] = randn(shape["vocab_size"], hid, fan_in=hid)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **shape,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(w, str(dest / "model.safetensors"))
    return dest
