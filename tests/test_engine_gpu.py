"""bf16 on CUDA: bitwise equality across chunkings is impossible (fused kernels
reorder reductions with the shape), so the tolerance that holds is tested:
max |delta logit| between chunked and one-shot prefill, and greedy agreement
with the float64 CPU reference. Skipped without a CUDA device."""

from __future__ import annotations

import random

import pytest
import torch

from srt_ext.engines.reference import ForwardItem, ReferenceEngine
from srt_ext.engines.reference.model_store import TINY_MODEL

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MAX_ABS_DLOGIT = 0.25  # tiny model logits span ~+-10; bf16 keeps ~3 significant digits
MIN_ARGMAX_AGREEMENT = 0.95


def last_logits(engine, ids, chunks, other_len=0):
    alloc = engine.allocator
    slots, other = alloc.alloc(len(ids)), alloc.alloc(max(other_len, 1))
    pos, lg = 0, None
    for c in chunks:
        items = [
            ForwardItem(
                "a", ids[pos : pos + c], pos, slots[:pos], slots[pos : pos + c], pos + c == len(ids)
            )
        ]
        if other_len:
            items.append(
                ForwardItem("b", ids[:1] * other_len, 0, other[:0], other[:other_len], True)
            )
        lg = engine.logits(items)[0]
        pos += c
    alloc.free(slots)
    alloc.free(other)
    return lg.float().cpu()


def test_bf16_chunked_vs_one_shot_tolerance():
    gpu = ReferenceEngine(TINY_MODEL, device="cuda", kv_capacity_tokens=8192)
    cpu = ReferenceEngine(TINY_MODEL, kv_capacity_tokens=8192, dtype=torch.float64)
    assert gpu.dtype == torch.bfloat16 and not gpu.exact
    rng = random.Random(0)
    worst, agree, agree_cpu, cases = 0.0, 0, 0, 60
    for case in range(cases):
        n = rng.randint(2, 1500)
        ids = torch.randint(
            0, gpu.vocab_size, (n,), generator=torch.Generator().manual_seed(case)
        ).tolist()
        cuts = sorted({rng.randint(1, n - 1) for _ in range(rng.randint(1, 6))})
        chunks = [b - a for a, b in zip([0] + cuts, cuts + [n], strict=True)]
        one = last_logits(gpu, ids, [n])
        chunked = last_logits(gpu, ids, chunks, other_len=rng.randint(0, 64))
        ref = last_logits(cpu, ids, [n]) if case % 6 == 0 else None
        worst = max(worst, (one - chunked).abs().max().item())
        agree += int(one.argmax() == chunked.argmax())
        if ref is not None:
            agree_cpu += int(one.argmax() == ref.argmax())
    print(
        f"bf16: max |dlogit| chunked vs one-shot {worst:.4f}, argmax agreement {agree}/{cases}, "
        f"vs float64 CPU {agree_cpu}/{cases // 6}"
    )
    assert worst < MAX_ABS_DLOGIT
    assert agree / cases >= MIN_ARGMAX_AGREEMENT
    assert agree_cpu / (cases // 6) >= 0.8
