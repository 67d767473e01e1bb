"""Load a Llama-architecture Hugging Face checkpoint into fused tensors.

q/k/v and gate/up are concatenated once at load time so a layer does two dense
matmuls before attention and MLP instead of five: fewer kernel launches on a GPU
and fewer Python-level ops per tile on the CPU exact path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from srt_ext.engines.reference.config import LlamaArch
from srt_ext.engines.reference.shapes import is_random_init, iter_random_tensors


@dataclass
class LayerWeights:
    in_norm: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


@dataclass
class LlamaWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor


def _checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise FileNotFoundError(f"no safetensors or pytorch_model*.bin weights in {model_dir}")


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(path, map_location="cpu", weights_only=True).items()


def load_weights(
    model_dir: str | Path, arch: LlamaArch, device: torch.device | str, dtype: torch.dtype
) -> LlamaWeights:
    """Read every shard once, cast to ``dtype`` on ``device``, fuse per layer."""
    raw: dict[str, torch.Tensor] = {}
    tensors = (
        iter_random_tensors(model_dir, device, dtype)
        if is_random_init(model_dir)
        else _iter_tensors(_checkpoint_files(Path(model_dir)))
    )
    for name, tensor in tensors:
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        raw[name] = tensor.to(device=device, dtype=dtype)

    def take(name: str) -> torch.Tensor:
        try:
            return raw.pop(name)
        except KeyError:
            raise KeyError(f"checkpoint {model_dir} lacks tensor {name!r}") from None

    def maybe(name: str) -> torch.Tensor | None:
        return raw.pop(name, None)

    layers = []
    for i in range(arch.num_layers):
        p = f"layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        biases = [maybe(p + f"self_attn.{x}_proj.bias") for x in "qkv"]
        present = [b for b in biases if b is not None]
        qkv_bias = torch.cat(present) if len(present) == len(biases) else None
        gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        layers.append(
            LayerWeights(
                in_norm=take(p + "input_layernorm.weight"),
                qkv=qkv.contiguous(),
                qkv_bias=qkv_bias,
                o=take(p + "self_attn.o_proj.weight"),
                o_bias=maybe(p + "self_attn.o_proj.bias"),
                post_norm=take(p + "post_attention_layernorm.weight"),
                gate_up=gate_up.contiguous(),
                down=take(p + "mlp.down_proj.weight"),
            )
        )
    embed = take("embed_tokens.weight")
    lm_head = maybe("lm_head.weight")
    if lm_head is None:
        if not arch.tie_word_embeddings:
            raise KeyError(f"checkpoint {model_dir} lacks lm_head.weight")
        lm_head = embed
    return LlamaWeights(embed=embed, layers=layers, norm=take("norm.weight"), lm_head=lm_head)
