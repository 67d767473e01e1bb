"""Random-weight models of real shapes: drawn on the device at load time, or written.

A GPU timing needs the *shape* of a real model (an 8B Llama's matmuls, KV bytes
per token, vocabulary), not its weights, and a 16 GB checkpoint cannot travel
to the GPU machine (64 MiB per call, no network there). A shape directory holds
``config.json``, the tokenizer files of the embedded tiny model (WordPiece,
~30K ids: valid ids for every shape's larger vocabulary) and
``random_init.json`` instead of weight files; ``weights.load_weights`` sees the
marker and draws every tensor on the target device with a generator seeded from
(seed, tensor name), so the same shape and seed give the same model whatever
the load order, and nothing is written to disk but a few KB.

The weight scales follow ``tiny_model.random_weights`` (activations O(1),
logits spread over a few units) so greedy decoding is not degenerate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from srt_ext.engines.reference.tiny_model import (
    TINY_SHAPE,
    TOKENIZER_FILES,
    cache_root,
    tokenizer_source,
)

RANDOM_INIT = "random_init.json"
DEFAULT_SEED = 1234

# Hugging Face config fields of public checkpoints (architecture numbers only).
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {  # Llama-3.1-8B(-Instruct), the paper's model
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "smollm2-135m": {  # SmolLM2-135M(-Instruct), the CPU default
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "tiny": {**TINY_SHAPE, "vocab_size": 30522, "tie_word_embeddings": False},
}


def shape_config(name: str) -> dict[str, Any]:
    """The config.json of shape ``name`` (special ids from the shipped tokenizer)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(sorted(SHAPES))}")
    vocab = json.loads((tokenizer_source() / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": vocab.get("[CLS]"),
        "eos_token_id": vocab.get("[SEP]"),
        "pad_token_id": vocab.get("[PAD]"),
        **SHAPES[name],
    }
    if max(vocab.values()) >= cfg["vocab_size"]:
        raise ValueError(f"shape {name!r}: vocabulary smaller than the shipped tokenizer's")
    return cfg


def ensure_shape_model(name: str, seed: int = DEFAULT_SEED, root: str | Path | None = None) -> Path:
    """A model directory of shape ``name`` with random weights drawn at load time."""
    config = shape_config(name)
    base = Path(root) if root is not None else cache_root()
    digest = hashlib.sha256(json.dumps([config, seed], sort_keys=True).encode()).hexdigest()[:12]
    final = base / f"shape-{name}-{digest}"
    if (final / RANDOM_INIT).exists():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".shape-{name}-", dir=base))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for fname in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_source() / fname, tmp / fname)
        (tmp / RANDOM_INIT).write_text(json.dumps({"seed": seed, "shape": name}) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its identical copy first
            if not (final / RANDOM_INIT).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_random_init(model_dir: str | Path) -> bool:
    return (Path(model_dir) / RANDOM_INIT).exists()


def _generator(device: torch.device, seed: int, name: str) -> torch.Generator:
    sub = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "little")
    return torch.Generator(device=device).manual_seed(sub)


def iter_random_tensors(
    model_dir: str | Path, device: torch.device | str, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs of the shape's random weights, drawn on ``device``."""
    model_dir, device = Path(model_dir), torch.device(device)
    seed = int(json.loads((model_dir / RANDOM_INIT).read_text())["seed"])
    cfg = json.loads((model_dir / "config.json").read_text())
    hid, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or hid // nh

    def randn(name: str, *shape: int, std: float, mean: float = 0.0) -> tuple[str, torch.Tensor]:
        t = torch.randn(*shape, generator=_generator(device, seed, name), device=device)
        return name, (t * std + mean).to(dtype)

    yield randn("model.embed_tokens.weight", vocab, hid, std=1.0)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield randn(p + "input_layernorm.weight", hid, std=0.1, mean=1.0)
        yield randn(p + "self_attn.q_proj.weight", nh * hd, hid, std=2.0 / hid**0.5)
        yield randn(p + "self_attn.k_proj.weight", nkv * hd, hid, std=2.0 / hid**0.5)
        yield randn(p + "self_attn.v_proj.weight", nkv * hd, hid, std=1.0 / hid**0.5)
        yield randn(p + "self_attn.o_proj.weight", hid, nh * hd, std=1.0 / (nh * hd) ** 0.5)
        yield randn(p + "post_attention_layernorm.weight", hid, std=0.1, mean=1.0)
        yield randn(p + "mlp.gate_proj.weight", inter, hid, std=1.0 / hid**0.5)
        yield randn(p + "mlp.up_proj.weight", inter, hid, std=1.0 / hid**0.5)
        yield randn(p + "mlp.down_proj.weight", hid, inter, std=1.0 / inter**0.5)
    yield randn("model.norm.weight", hid, std=0.1, mean=1.0)
    if not cfg.get("tie_word_embeddings"):
        yield randn("lm_head.weight", vocab, hid, std=3.0 / hid**0.5)


SMOLLM2_135M: dict[str, Any] = SHAPES["smollm2-135m"]


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
