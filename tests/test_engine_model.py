"""Our Llama forward against transformers' LlamaForCausalLM (the oracle).

Stock HF runs RMSNorm, softmax and the rope table in float32 even in a float64
model, so for a 1e-10 comparison the oracle is patched to float64 in exactly
those three places (and given our float64 inverse frequencies); unpatched HF is
compared at float32-level tolerance.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from srt_ext.engines.reference import ForwardItem, ReferenceEngine
from srt_ext.engines.reference.config import LlamaArch, rope_inv_freq
from srt_ext.engines.reference.model_store import TINY_MODEL

pytestmark = pytest.mark.timeout(300)


def _rms64(self, x):
    var = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))


def _rope64(self, x, position_ids):
    freqs = position_ids[..., None].double() * self.inv_freq64
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _attn64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def hf_logits(model_dir, ids: list[int], float64_exact: bool) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager"
    ).eval()
    mp = pytest.MonkeyPatch()
    if float64_exact:
        inv, _ = rope_inv_freq(LlamaArch.from_dir(model_dir))
        model.model.rotary_emb.inv_freq64 = inv
        mp.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms64)
        mp.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", _rope64)
        mp.setattr(modeling_llama, "eager_attention_forward", _attn64)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        mp.undo()


def engine_logits(engine: ReferenceEngine, ids: list[int], lengths: list[int]) -> torch.Tensor:
    """Last-token logits of each prefix ids[:L], each prefilled one-shot."""
    rows = []
    for n in lengths:
        slots = engine.allocator.alloc(n)
        (lg,) = engine.logits([ForwardItem("o", ids[:n], 0, slots[:0], slots, sample=True)])
        engine.allocator.free(slots)
        rows.append(lg)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny_engine() -> ReferenceEngine:
    return ReferenceEngine(TINY_MODEL, kv_capacity_tokens=1024, dtype=torch.float64)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> str:
    """A random Llama-3-style checkpoint: llama3 rope scaling, tied embeddings,
    explicit head_dim, sharded safetensors (exercises the loader's index path)."""
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.8, 1.2)
    out = tmp_path_factory.mktemp("llama3")
    model.save_pretrained(out, max_shard_size="200KB", safe_serialization=True)
    assert (out / "model.safetensors.index.json").exists()
    return str(out)


def test_tiny_model_matches_hf_float64(tiny_engine):
    ids = tiny_engine.tokenizer("Streaming context into a live request, " * 12).input_ids[:70]
    lengths = [1, 2, 15, 16, 17, 33, 50, 70]
    ours = engine_logits(tiny_engine, ids, lengths)
    ref = hf_logits(tiny_engine.model_path, ids, float64_exact=True)[[n - 1 for n in lengths]]
    assert (ours - ref).abs().max().item() < 1e-10
    stock = hf_logits(tiny_engine.model_path, ids, float64_exact=False)[[n - 1 for n in lengths]]
    assert (ours - stock).abs().max().item() < 1e-3
    assert torch.equal(ours.argmax(-1), stock.argmax(-1))


def test_llama3_sharded_tied_checkpoint_matches_hf(llama3_dir):
    engine = ReferenceEngine(llama3_dir, kv_capacity_tokens=256, dtype=torch.float64)
    assert engine.arch.rope_scaling["rope_type"] == "llama3"
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (150,), generator=gen).tolist()
    lengths = [1, 40, 65, 150]  # past original_max_position_embeddings=64
    ours = engine_logits(engine, ids, lengths)
    ref = hf_logits(llama3_dir, ids, float64_exact=True)[[n - 1 for n in lengths]]
    assert (ours - ref).abs().max().item() < 1e-10


def test_rope_inv_freq_matches_hf(llama3_dir, tiny_engine):
    for model_dir in (llama3_dir, tiny_engine.model_path):
        hf = transformers.LlamaForCausalLM.from_pretrained(model_dir).model.rotary_emb
        ours, scale = rope_inv_freq(LlamaArch.from_dir(model_dir))
        assert scale == hf.attention_scaling
        torch.testing.assert_close(ours.float(), hf.inv_freq.float(), rtol=1e-6, atol=0)
