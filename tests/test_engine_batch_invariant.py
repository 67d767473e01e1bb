"""The float32 batch-invariant path: its probe, its fallback, its thread pin, and
bit-exactness on SmolLM2-135M's matrix shapes (2 layers of random weights: the
same GEMM/attention shapes as the real model, so the same kernel code paths)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srt_ext.engines.reference import ForwardItem, ReferenceEngine, exact_plan
from srt_ext.engines.reference import llama as llama_mod
from srt_ext.engines.reference.drive import DrivenStream, greedy_generate, run_streams
from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.engines.reference.probe import consistent_sizes
from srt_ext.engines.reference.shapes import SMOLLM2_135M, write_random_llama
from stream2llm.tiling import split_sizes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol(one_thread, tmp_path_factory) -> ReferenceEngine:
    shape = {**SMOLLM2_135M, "num_hidden_layers": 2, "max_position_embeddings": 1024}
    path = write_random_llama(tmp_path_factory.mktemp("smol2"), shape, seed=3)
    return ReferenceEngine(path, kv_capacity_tokens=2048)


def ids_for(seed: int, n: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def last_logits(engine: ReferenceEngine, ids: list[int], chunks: list[int], rng: random.Random):
    """Prefill ``ids`` chunk by chunk, each step shared with a random other
    request (a prefill chunk or a decode token) placed before or after it."""
    alloc = engine.allocator
    slots, other = alloc.alloc(len(ids)), alloc.alloc(300)
    pos, out = 0, None
    try:
        for c in chunks:
            item = ForwardItem("a", ids[pos : pos + c], pos, slots[:pos], slots[pos : pos + c],
                               pos + c == len(ids))  # fmt: skip
            k = rng.choice([1, rng.randint(1, 299)])
            start = 0 if k > 1 else rng.randint(0, 298)  # k == 1 and start > 0: a decode row
            mate = ForwardItem("b", ids_for(k, k, engine.vocab_size), start, other[:start],
                               other[start : start + k], True)  # fmt: skip
            items = [item, mate] if rng.random() < 0.5 else [mate, item]
            out = engine.logits(items)[items.index(item)]
            pos += c
    finally:
        alloc.free(slots)
        alloc.free(other)
    return out


def test_split_sizes_covers_rows_with_bounded_padding():
    sizes = (2, 4, 8, 16, 32, 64, 128)
    for n in range(1, 600):
        tiles = split_sizes(n, sizes)
        assert set(tiles) <= set(sizes) and n <= sum(tiles) < n + 2


def test_probe_keeps_only_interchangeable_sizes():
    x = torch.randn(3, 257, generator=torch.Generator().manual_seed(0))

    def like_gemv_at_one(m: int) -> list[torch.Tensor]:  # m == 1 rounds its sum differently
        total = x.expand(m, -1, -1).sum(-1)
        return [torch.nextafter(total, total + 1) if m == 1 else total]

    assert consistent_sizes(lambda m: [x.sum(-1).expand(m, -1)], (1, 2, 4)) == (1, 2, 4)
    assert consistent_sizes(like_gemv_at_one, (1, 2, 4, 8)) == (2, 4, 8)

    def row_index_matters(m: int) -> list[torch.Tensor]:
        out = x.sum(-1).expand(m, -1).clone()
        out[-1] += 1e-3 if m == 4 else 0.0
        return [out]

    assert consistent_sizes(row_index_matters, (2, 4, 8)) == (8,)


def test_probe_failure_falls_back_to_position_tiles(one_thread, monkeypatch, caplog):
    monkeypatch.setattr(exact_plan, "consistent_sizes", lambda op, sizes: ())
    engine = ReferenceEngine(TINY_MODEL, kv_capacity_tokens=512)
    assert engine.dtype == torch.float32 and not engine.model.plan.sized
    assert "position layout" in caplog.text
    ids = ids_for(5, 70, engine.vocab_size)
    rng = random.Random(1)
    assert torch.equal(
        last_logits(engine, ids, [70], rng), last_logits(engine, ids, [9, 1, 60], rng)
    )


def test_thread_count_is_pinned(one_thread):
    engine = ReferenceEngine(TINY_MODEL, kv_capacity_tokens=256)
    slots = engine.allocator.alloc(3)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="fixed count"):
            engine.logits([ForwardItem("t", [1, 2, 3], 0, slots[:0], slots, True)])
    finally:
        torch.set_num_threads(1)


def test_smollm_shapes_pass_the_probe(smol):
    plan = smol.model.plan
    gs = smol.arch.group_size
    assert smol.dtype == torch.float32 and smol.model.packed and gs == 3
    assert plan.sized and plan.dense[0] <= 4 and plan.attn[-1] == gs * llama_mod.SIZED_ATTN_BLOCK


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 400), cuts=st.lists(st.integers(1, 400), max_size=5), seed=st.integers(0, 99)
)
def test_smollm_chunked_and_batched_logits_bit_identical(smol, n, cuts, seed):
    """Big chunks land in 128-row tiles, small ones and decode rows in small
    tiles, each next to random company: the last token's logits never move."""
    ids = ids_for(seed, n, smol.vocab_size)
    points = sorted({c % n for c in cuts if c % n}) + [n]
    chunks = [b - a for a, b in zip([0] + points[:-1], points, strict=True)]
    rng = random.Random(seed)
    one = last_logits(smol, ids, [n], rng)
    assert torch.equal(last_logits(smol, ids, chunks, rng), one)


def test_smollm_decode_equals_recompute_and_streams_agree(smol):
    """Generated tokens are decode rows in one run and prefill rows when a
    recompute preemption re-prefills them: bit-identical logits either way."""
    ids = ids_for(8, 150, smol.vocab_size)
    want = greedy_generate(smol, ids, 8)
    streams = [DrivenStream("x", ids, [37, 1, 112], 8), DrivenStream("y", ids[:90], [90], 8)]
    outs = run_streams(smol, streams)
    assert outs["x"] == want and outs["y"] == greedy_generate(smol, ids[:90], 8)
    alloc, seq = smol.allocator, ids + want
    slots = alloc.alloc(len(seq))
    (lg,) = smol.logits([ForwardItem("d", ids, 0, slots[:0], slots[:150], True)])
    decoded = [lg]
    for p in range(150, len(seq) - 1):  # decode steps, one token each
        (lg,) = smol.logits([ForwardItem("d", [seq[p]], p, slots[:p], slots[p : p + 1], True)])
        decoded.append(lg)
    alloc.free(slots)
    for n in (151, 154, len(seq) - 1):  # re-prefill prompt + generated tokens at once
        fresh = alloc.alloc(n)
        (full,) = smol.logits([ForwardItem("r", seq[:n], 0, fresh[:0], fresh, True)])
        alloc.free(fresh)
        assert torch.equal(full, decoded[n - 150])


def test_float32_path_tracks_float64(smol, tmp_path):
    """Exactness is about invariance; accuracy is float32's: the default path
    stays within float32 rounding of the float64 path and agrees on argmax."""
    f64 = ReferenceEngine(smol.model_path, kv_capacity_tokens=512, dtype=torch.float64)
    rng = random.Random(0)
    for seed, n in [(1, 40), (2, 200)]:
        ids = ids_for(seed, n, smol.vocab_size)
        a, b = last_logits(smol, ids, [n], rng), last_logits(f64, ids, [n], rng)
        assert (a.double() - b).abs().max().item() < 1e-3 * b.abs().max().item()
        assert int(a.argmax()) == int(b.argmax())
