"""Unit tests of the streaming radix tree and the per-stream KV manager,
on SGLang's real RadixCache and allocators (CPU)."""

from __future__ import annotations

import pytest
import torch
from kv_fakes import FakeKV, prefix_hashes

from radix_stream import KVCapacityError, StreamingRadixCache, StreamKVCache, StreamKVError
from radix_stream.tree import RadixCache

TEMPLATE = list(range(1000, 1016))  # 16 tokens every stream starts with


def doc(i: int, n: int = 8) -> list[int]:
    return [i * 100 + j for j in range(n)]


def test_tree_is_sglangs_radix_cache() -> None:
    kv = StreamKVCache.create(64)
    assert isinstance(kv.tree, StreamingRadixCache)
    assert isinstance(kv.tree, RadixCache)


@pytest.mark.parametrize("page", [1, 4])
def test_append_extends_the_leaf(page: int) -> None:
    f = FakeKV(128, page)
    f.kv.open("a")
    ids = TEMPLATE + doc(1) + doc(2)
    for n in (5, 11, 8, 8):
        assert f.compute("a", ids, n)
        f.kv.check()
        f.assert_content("a")
    assert f.kv.computed("a") == 32
    # the whole computed prefix (page aligned) is in the tree, on one path
    assert f.kv.tree.depth(f.kv._streams["a"].node) == 32 // page * page


@pytest.mark.parametrize("page", [1, 4])
def test_update_keeps_lcp_and_frees_the_rest_now(page: int) -> None:
    f = FakeKV(128, page)
    f.kv.open("a")
    v1 = TEMPLATE + doc(1) + doc(2) + doc(3)
    f.compute("a", v1, len(v1))
    before = f.kv.stats()
    v2 = TEMPLATE + doc(1) + doc(9) + doc(3)  # doc 2 replaced: LCP = 24
    kept, invalidated = f.kv.truncate("a", v2)
    assert kept == 24 and invalidated == 16
    f.kv.check()
    f.assert_content("a")
    after = f.kv.stats()
    assert after.free - before.free == 16  # freed at once, not left to LRU
    assert after.evictable == 0
    f.compute("a", v2, 16)
    f.assert_content("a")
    assert f.kv.token_ids("a") == v2


def test_update_cut_inside_a_page_keeps_the_partial_page_when_exclusive() -> None:
    f = FakeKV(128, 4)
    f.kv.open("a")
    v1 = TEMPLATE + [1, 2, 3, 4, 5, 6, 7, 8]
    f.compute("a", v1, len(v1))
    v2 = TEMPLATE + [1, 2, 3, 9, 9]
    kept, invalidated = f.kv.truncate("a", v2)
    assert (kept, invalidated) == (19, 5)  # 19 = 16 + 3, mid-page
    f.kv.check()
    f.assert_content("a")
    f.compute("a", v2, 2)  # overwrites the rest of the kept page
    f.kv.check()
    f.assert_content("a")
    assert f.kv.token_ids("a") == v2


def test_update_cut_inside_a_shared_page_falls_back_to_the_page_start() -> None:
    f = FakeKV(128, 4)
    ids = TEMPLATE + [1, 2, 3, 4, 5, 6, 7, 8]
    for rid in ("a", "b"):
        f.kv.open(rid)
        f.kv.reuse_prefix(rid, ids)
        f.compute(rid, ids, len(ids) - f.kv.computed(rid))
    kept, _ = f.kv.truncate("a", TEMPLATE + [1, 2, 3, 9])
    assert kept == 16  # the page holding position 19 is b's too: recompute 3 tokens
    f.kv.check()
    f.assert_content("a")
    f.assert_content("b")


def test_shared_prefix_is_shared_and_never_freed_by_another_stream() -> None:
    f = FakeKV(256)
    a = TEMPLATE + doc(1) + doc(2)
    b = TEMPLATE + doc(1) + doc(5)
    f.kv.open("a")
    f.compute("a", a, len(a))
    f.kv.open("b")
    assert f.kv.reuse_prefix("b", b) == 24  # template + doc 1 computed once
    f.compute("b", b, 8)
    assert f.kv.stats().used == 24 + 8 + 8
    # b's update cuts into the part it shares with a: a's KV must survive
    f.kv.truncate("b", TEMPLATE + [7] * 8)
    f.kv.check()
    f.assert_content("a")
    assert f.kv.computed("b") == 16
    f.kv.close("b", keep_cache=False)  # abort frees only b's exclusive KV
    f.kv.check()
    f.assert_content("a")
    assert f.kv.computed("a") == len(a)


def test_pinned_streams_survive_eviction_and_finished_ones_do_not() -> None:
    f = FakeKV(64)
    f.kv.open("waiting")
    f.compute("waiting", doc(1, 20), 20)  # pinned: waiting for more chunks
    f.kv.open("done")
    f.compute("done", doc(2, 20), 20)
    f.kv.close("done")  # finished: cached, evictable
    assert f.kv.stats().evictable == 20
    f.kv.open("new")
    assert f.compute("new", doc(3, 40), 40)  # needs 40 of 24 free: evicts "done"
    f.kv.check()
    f.assert_content("waiting")
    assert f.kv.stats().evictable == 0
    f.kv.open("big")
    assert f.kv.reserve("big", 10) is None  # only pinned KV left: caller must preempt
    f.kv.check()


def test_unpin_makes_kv_evictable_and_pin_rematches_what_is_left() -> None:
    f = FakeKV(64)
    f.kv.open("a")
    f.compute("a", doc(1, 30), 14)  # two chunks: two tree nodes
    f.compute("a", doc(1, 30), 16)
    f.kv.unpin("a")
    assert f.kv.stats().evictable == 30 and f.kv.held_tokens("a") == 0
    assert f.kv.pin("a") == 30  # nothing was evicted: all of it is reused
    f.kv.unpin("a")
    f.kv.open("b")
    f.compute("b", doc(2, 50), 50)  # evicts a's leaf node (16 tokens)
    assert f.kv.pin("a") == 14
    f.kv.check()
    f.assert_content("a")


@pytest.mark.parametrize("page", [1, 4])
def test_recompute_preemption_frees_exclusive_kv_and_keeps_shared(page: int) -> None:
    f = FakeKV(256, page)
    a = TEMPLATE + doc(1) + doc(2)
    for rid in ("a", "b"):
        f.kv.open(rid)
        f.kv.reuse_prefix(rid, a if rid == "a" else TEMPLATE)
        ids = a if rid == "a" else TEMPLATE + doc(3)
        f.compute(rid, ids, len(ids) - f.kv.computed(rid))
    held = f.kv.held_tokens("a")
    assert held == 16
    free = f.kv.stats().free
    res = f.kv.preempt("a", "recompute")
    assert res.freed == held and f.kv.stats().free == free + held
    assert f.kv.computed("a") == 16  # falls back to the shared template
    f.kv.check()
    assert not f.kv.is_resident("a")  # waits unpinned: its prefix pins nothing
    assert f.kv.resume("a") and f.kv.computed("a") == 16
    f.compute("a", a, 16)
    f.assert_content("a")


@pytest.mark.parametrize("page", [1, 4])
def test_swap_round_trip_restores_exact_kv(page: int) -> None:
    f = FakeKV(128, page)
    ids = TEMPLATE + doc(1) + [5, 6, 7]
    f.kv.open("a")
    f.compute("a", ids, len(ids))
    res = f.kv.preempt("a", "swap")
    assert res.mode == "swap" and res.swapped == len(ids)
    assert f.kv.stats().host == len(ids) and f.kv.stats().used == 0
    f.content[:] = -7  # someone else's KV overwrote the freed slots
    assert f.kv.resume("a")
    f.kv.check()
    f.assert_content("a")
    assert f.kv.token_ids("a") == ids and f.kv.stats().host == 0


def test_swap_falls_back_to_recompute_when_the_host_pool_is_full() -> None:
    f = FakeKV(128, 1, host=10)
    f.kv.open("a")
    f.compute("a", doc(1, 20), 20)
    assert f.kv.preempt("a", "swap").mode == "recompute"
    assert f.kv.computed("a") == 0


def test_duplicate_computation_is_deduplicated_on_commit() -> None:
    f = FakeKV(128)
    ids = TEMPLATE + doc(1)
    for rid in ("a", "b"):  # both start before either commits: no reuse possible
        f.kv.open(rid)
    sa = f.kv.reserve("a", len(ids))
    sb = f.kv.reserve("b", len(ids))
    assert sa is not None and sb is not None
    hashes = torch.tensor(prefix_hashes(ids))
    f.content[sa] = hashes
    f.content[sb] = hashes
    f.kv.commit("a", ids)
    f.kv.commit("b", ids)
    assert f.kv.stats().used == len(ids)  # b's duplicate slots went back
    f.kv.check()
    f.assert_content("b")


def test_bad_calls_raise_typed_errors_and_change_nothing() -> None:
    f = FakeKV(32)
    with pytest.raises(StreamKVError):
        f.kv.reserve("nope", 1)
    f.kv.open("a")
    with pytest.raises(StreamKVError):
        f.kv.open("a")
    with pytest.raises(KVCapacityError):
        f.kv.reserve("a", 33)
    f.kv.reserve("a", 4)
    with pytest.raises(StreamKVError):
        f.kv.commit("a", [1, 2])
    with pytest.raises(StreamKVError):
        f.kv.truncate("a", [9])
    f.kv.cancel("a")
    f.kv.check()
    assert f.kv.stats().used == 0


def test_close_returns_everything() -> None:
    f = FakeKV(64, 4)
    f.kv.open("a")
    f.compute("a", doc(1, 10), 10)
    f.kv.close("a", keep_cache=False)
    f.kv.check()
    assert f.kv.stats().free == 64


@pytest.mark.parametrize("page", [1, 4])
def test_reserve_many_equals_one_by_one_reserve(page: int) -> None:
    """One allocator call for a batch: same positions, page-aligned runs, exact KV."""
    f = FakeKV(256, page)
    ids = {r: TEMPLATE + doc(i, 13) for i, r in enumerate("abc", 1)}
    for r in ids:
        f.kv.open(r)
    f.compute("a", ids["a"], 5)  # a partial page stays private: the batch extends it
    reqs = [("a", 11), ("b", 9), ("c", 1)]
    got = f.kv.reserve_many(reqs)
    assert got is not None and [len(x) for x in got] == [11, 9, 1]
    for (r, n), slots in zip(reqs, got, strict=True):
        start = f.kv.computed(r)
        hashes = prefix_hashes(ids[r][: start + n])[start:]
        f.content[slots] = torch.tensor(hashes, dtype=torch.int64)
        f.kv.commit(r, ids[r][start : start + n])
        f.assert_content(r)
    f.kv.check()
    with pytest.raises(StreamKVError):
        f.kv.reserve_many([("a", 1), ("a", 1)])
    f.kv.check()  # the failed call reserved nothing
    assert f.kv.reserve_many([("a", 1), ("b", 10_000)]) is None  # all or nothing
    assert f.kv._streams["a"].reserved == 0
    f.kv.check()


@pytest.mark.parametrize("page", [1, 4])
def test_preempted_stream_pins_no_shared_prefix_and_resumes_exactly(page: int) -> None:
    """Two twins share one prefix: neither frees it alone (``held_tokens``), both do
    together (``held_by_rank``); the swapped one locks nothing while it waits."""
    f = FakeKV(128, page)
    ids = TEMPLATE + doc(1) + doc(2)
    for rid in ("a", "b"):
        f.kv.open(rid)
        f.kv.reuse_prefix(rid, ids)
        f.compute(rid, ids, len(ids) - f.kv.computed(rid))
    assert f.kv.held_tokens("a") == f.kv.held_tokens("b") == 0
    assert f.kv.held_by_rank(["a", "b"]) == [len(ids), 0]
    assert f.kv.preempt("b", "swap").freed == 0  # nothing exclusive: nothing to move
    assert f.kv.held_tokens("a") == len(ids)  # b's lock no longer hides the prefix
    res = f.kv.preempt("a", "swap")
    assert res.mode == "swap" and res.freed == len(ids) and f.kv.stats().pinned == 0
    f.content[:] = -7
    assert f.kv.resume("a") and f.kv.resume("b")
    f.kv.check()
    for rid in ("a", "b"):
        assert f.kv.token_ids(rid) == ids
        f.assert_content(rid)


def test_swapped_stream_whose_prefix_was_evicted_resumes_by_recompute() -> None:
    f = FakeKV(128, 1)
    f.kv.open("a")
    f.kv.open("b")
    f.compute("a", TEMPLATE + doc(1), 24)
    f.kv.reuse_prefix("b", TEMPLATE)
    f.compute("b", TEMPLATE + doc(2), 8)
    assert f.kv.preempt("b", "swap").swapped == 8  # its template stays in the tree
    f.kv.close("a", keep_cache=False)
    f.kv.tree.evict_tokens(f.kv.tree.evictable_size())  # LRU takes the template too
    assert f.kv.resume("b")  # the copy cannot follow a gap: dropped, not restored
    f.kv.check()
    assert f.kv.computed("b") == 0 and f.kv.stats().host == 0 and f.kv.is_resident("b")
