"""KV in SGLang's pool: swap through the mover is bit-exact, profiling helpers
work, and the engine runs under radix_stream's StreamKVCache (reserve/commit,
prefix reuse, swap and recompute preemption) with unchanged outputs."""

from __future__ import annotations

import pytest
import torch

from srt_ext.engines.reference import ForwardItem, ReferenceEngine
from srt_ext.engines.reference.drive import greedy_generate
from srt_ext.engines.reference.model_store import TINY_MODEL

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ReferenceEngine(TINY_MODEL, kv_capacity_tokens=512)
    torch.set_num_threads(threads)


def ids_of(engine: ReferenceEngine, seed: int, n: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, engine.vocab_size, (n,), generator=gen).tolist()


def test_pool_is_sglangs(engine):
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    assert isinstance(engine.pool, MHATokenToKVPool)
    assert isinstance(engine.allocator, TokenToKVPoolAllocator)
    assert engine.allocator.available_size() == 512
    assert engine.pool.k_buffer[0].dtype == engine.dtype == torch.float32  # the CPU default
    assert engine.max_context_len == 512


def test_swap_out_in_restores_kv_bit_exactly(engine):
    alloc, pool, mover = engine.allocator, engine.pool, engine.kv_mover()
    ids = ids_of(engine, 3, 40)
    expected = greedy_generate(engine, ids, 8)
    slots = alloc.alloc(40)
    (first,) = engine.forward([ForwardItem("s", ids, 0, slots[:0], slots, sample=True)])
    before = [
        (k[slots].clone(), v[slots].clone())
        for k, v in zip(pool.k_buffer, pool.v_buffer, strict=True)
    ]
    host = mover.to_host(slots)
    alloc.free(slots)
    clobber = alloc.alloc(500)  # other work overwrites the freed slots
    for k, v in zip(pool.k_buffer, pool.v_buffer, strict=True):
        k[clobber] = -1.0
        v[clobber] = -1.0
    alloc.free(clobber)
    got = alloc.alloc(80)
    back = got[40:]  # different slots than before
    alloc.free(got[:40])
    mover.to_device(host, back)
    for (k0, v0), k, v in zip(before, pool.k_buffer, pool.v_buffer, strict=True):
        assert torch.equal(k[back], k0) and torch.equal(v[back], v0)
    # decoding on from the swapped-in KV gives the never-swapped continuation
    slots = torch.cat([back, alloc.alloc(7)])
    out = [first]
    for p in range(40, 47):
        item = ForwardItem("s", [out[-1]], p, slots[:p], slots[p : p + 1], sample=True)
        out.append(engine.forward([item])[0])
    assert out == expected
    alloc.free(slots)
    assert alloc.available_size() == engine.kv_capacity_tokens
    with pytest.raises(ValueError):
        mover.to_device(host, back[:3])


def test_profile_helpers(engine):
    point = engine.profile_point(64)
    assert point.n_tokens == 64
    assert point.prefill_s > 0 and point.swap_out_s > 0 and point.swap_in_s > 0
    assert engine.allocator.available_size() == engine.kv_capacity_tokens


def test_runs_under_stream_kv_cache(engine):
    """Chunks through StreamKVCache: reserve -> forward -> commit, a swap and a
    recompute preemption in the middle, prefix reuse by a second stream."""
    from radix_stream import StreamKVCache

    kv = StreamKVCache(engine.allocator, page_size=1, mover=engine.kv_mover())
    ids = ids_of(engine, 5, 70)
    expected = greedy_generate(engine, ids, 6)

    def step(rid: str, tokens: list[int], sample: bool) -> int | None:
        start = kv.computed(rid)
        new = kv.reserve(rid, len(tokens))
        assert new is not None
        (tok,) = engine.forward([ForwardItem(rid, tokens, start, kv.slots(rid), new, sample)])
        kv.commit(rid, tokens)
        return tok

    def finish(rid: str, first: int | None) -> list[int]:
        out = [first]
        while len(out) < 6:
            out.append(step(rid, [out[-1]], True))
        return out

    kv.open("a")
    step("a", ids[:25], False)
    assert kv.preempt("a", "swap").swapped == 25
    assert kv.resume("a") and kv.computed("a") == 25
    step("a", ids[25:50], False)
    kv.preempt("a", "recompute")
    assert kv.resume("a")
    redo = kv.computed("a")
    assert redo < 50
    assert finish("a", step("a", ids[redo:], True)) == expected
    kv.close("a", keep_cache=True)
    kv.check()
    # a second stream with the same prompt reuses the cached prefix; the last
    # prompt token is computed again because its logits are needed to sample
    kv.open("b")
    reused = kv.reuse_prefix("b", ids[:-1])
    assert reused == 69
    assert finish("b", step("b", ids[reused:], True)) == expected
    kv.close("b", keep_cache=False)
    kv.check()
