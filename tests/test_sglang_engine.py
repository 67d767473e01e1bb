"""The SGLang-engine hooks, driven on CPU with SGLang 0.5.23's own objects:
real ``Req``, ``PrefillAdder`` (our subclass), ``TokenToKVPoolAllocator``,
``ReqToTokenPool``, ``TypeBasedDispatcher``, msgpack IPC and ``HookRegistry``.
The forward pass (and so ``ScheduleBatch.prepare_for_extend``) needs a GPU."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import radix_stream._sglang  # noqa: F401

import pytest
import torch
from sglang.srt.managers.io_struct import (
    TokenizedGenerateReqInput,
    msgpack_decode,
    msgpack_encode,
)
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.managers.schedule_policy import AddReqResult
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.runtime_context import _CONTEXT
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.utils import TypeBasedDispatcher

from radix_stream.tree import StreamingRadixCache
from scheduler.cost_model import CostModel
from srt_ext.sglang_engine import kv, state
from srt_ext.sglang_engine.adder import StreamPrefillAdder, order_waiting_queue
from srt_ext.sglang_engine.messages import (
    StreamAbortReq,
    StreamChunkOutput,
    StreamChunkReq,
    StreamOpenReq,
    install_stream_handlers,
)
from srt_ext.sglang_engine.retract import retract_mode, stream_retraction_order


@pytest.fixture(scope="module", autouse=True)
def _server_args() -> None:
    # PrefillAdder reads SGLang's published config bags ("exec"), as in a server.
    _CONTEXT.set_server_args(ServerArgs(model_path="dummy", device="cpu"))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def sched() -> SimpleNamespace:
    state.reset_table(clock=Clock())
    rtp = ReqToTokenPool(8, 128, device="cpu", enable_memory_saver=False)
    alloc = TokenToKVPoolAllocator(256, torch.int64, "cpu", None, False)
    tree = StreamingRadixCache(CacheInitParams(
        disable=False, req_to_token_pool=rtp, token_to_kv_pool_allocator=alloc, page_size=1))
    s = SimpleNamespace(waiting_queue=[], tree_cache=tree, req_to_token_pool=rtp,
                        allocator=alloc, chunked_req=None, running_batch=None,
                        _request_dispatcher=TypeBasedDispatcher([]), aborted=[])

    def handle_generate_request(recv: TokenizedGenerateReqInput) -> None:  # as SGLang's
        s.waiting_queue.append(Req(recv.rid, "", array("q", recv.input_ids),
                                   SamplingParams(max_new_tokens=4)))

    def abort_request(recv: object) -> None:
        s.aborted.append(recv.rid)  # type: ignore[attr-defined]
        s.waiting_queue[:] = [r for r in s.waiting_queue if r.rid != recv.rid]  # type: ignore[attr-defined]

    s.handle_generate_request = handle_generate_request
    s.abort_request = abort_request
    install_stream_handlers(s)
    return s


def _gen(rid: str, ids: list[int]) -> TokenizedGenerateReqInput:
    return TokenizedGenerateReqInput(
        rid=rid, input_text=None, input_ids=array("q", ids), input_embeds=None, mm_inputs=None,
        token_type_ids=None, sampling_params=SamplingParams(max_new_tokens=4),
        return_logprob=False, logprob_start_len=-1, top_logprobs_num=0,
        token_ids_logprob=None, stream=False)


def _open(s: SimpleNamespace, rid: str, ids: list[int], mode: str = "append",
          final: bool = False) -> Req:
    out = s._request_dispatcher(StreamOpenReq(rid=rid, mode=mode, final=final,
                                              generate=_gen(rid, ids)))
    assert out.error is None and out.input_tokens == len(ids)
    return next(r for r in s.waiting_queue if r.rid == rid)


def test_messages_travel_over_sglang_msgpack_ipc(sched: SimpleNamespace) -> None:
    for msg in (StreamOpenReq(rid="a", generate=_gen("a", [1, 2])),
                StreamChunkReq(rid="a", input_ids=[3], final=True),
                StreamAbortReq(rid="a"), StreamChunkOutput(rid="a", input_tokens=3)):
        back = msgpack_decode(msgpack_encode(msg))
        assert type(back) is type(msg) and back.rid == "a"


def test_append_chunks_extend_a_queued_request(sched: SimpleNamespace) -> None:
    req = _open(sched, "a", [1, 2, 3])
    out = sched._request_dispatcher(StreamChunkReq(rid="a", input_ids=[4, 5]))
    assert list(req.origin_input_ids) == [1, 2, 3, 4, 5] and out.input_tokens == 5
    req.init_next_round_input(sched.tree_cache)  # SGLang rebuilds fill ids
    assert list(req.full_untruncated_fill_ids) == [1, 2, 3, 4, 5]
    assert state.table().is_partial(req)
    sched._request_dispatcher(StreamChunkReq(rid="a", input_ids=[6], final=True))
    assert not state.table().is_partial(req)
    out = sched._request_dispatcher(StreamChunkReq(rid="a", input_ids=[7]))
    assert out.error == "chunk after the final chunk"


def test_update_of_a_parked_stream_cuts_its_kv_to_the_lcp(sched: SimpleNamespace) -> None:
    tree, alloc = sched.tree_cache, sched.allocator
    req = _open(sched, "u", [1, 2, 3, 4, 5, 6], mode="update")
    # What parking leaves: the computed input in the tree, pinned by the stream.
    sched.waiting_queue.remove(req)
    free0 = alloc.available_size()
    last, _ = tree.extend_from(tree.root_node, array("q", [1, 2, 3, 4, 5, 6]),
                               alloc.alloc(6), None)
    t = state.table()
    info = t.streams["u"]
    kv.pin(tree, info, last)
    info.parked, t.parked["u"] = True, req
    out = sched._request_dispatcher(StreamChunkReq(rid="u", input_ids=[1, 2, 3, 9, 9]))
    assert out.invalidated_tokens == 3 and out.cached_tokens == 3
    assert alloc.available_size() == free0 - 3  # freed now, not left to LRU
    assert tree.protected_size() == 3 and req in sched.waiting_queue
    assert list(req.origin_input_ids) == [1, 2, 3, 9, 9]
    req.init_next_round_input(tree)
    assert req.prefix_len == 3  # the kept prefix is reused
    tree.check_tree()


def test_abort_of_a_parked_stream_releases_its_pin(sched: SimpleNamespace) -> None:
    tree, alloc = sched.tree_cache, sched.allocator
    req = _open(sched, "p", [1, 2, 3])
    sched.waiting_queue.remove(req)
    last, _ = tree.extend_from(tree.root_node, array("q", [1, 2, 3]), alloc.alloc(3), None)
    t = state.table()
    kv.pin(tree, t.streams["p"], last)
    t.parked["p"] = req
    sched._request_dispatcher(StreamAbortReq(rid="p"))
    assert tree.protected_size() == 0 and "p" not in t.streams
    q = _open(sched, "q", [4])
    sched._request_dispatcher(StreamAbortReq(rid="q"))  # queued: SGLang's abort path
    assert sched.aborted == ["q"] and q not in sched.waiting_queue


def _adder(s: SimpleNamespace, chunk: int = 64) -> StreamPrefillAdder:
    return StreamPrefillAdder(1, s.tree_cache, s.allocator, None, 0.5, 256, chunk)


def test_partial_stream_is_prefilled_as_an_unsampled_chunk(sched: SimpleNamespace) -> None:
    part = _open(sched, "part", [1, 2, 3, 4])
    part2 = _open(sched, "part2", [5, 6])
    done = _open(sched, "done", [7, 8, 9], final=True)
    adder = _adder(sched)
    for req in (part, part2, done):
        req.init_next_round_input(sched.tree_cache)
    assert adder.add_one_req(part, False, None) == AddReqResult.CONTINUE
    assert adder.new_chunked_req is part and part.extend_end == 4  # all it has, as a chunk
    # SGLang tracks one chunked request: a second partial stream waits its turn.
    assert adder.add_one_req(part2, False, None) == AddReqResult.CONTINUE
    assert part2 not in adder.can_run_list
    adder.add_one_req(done, False, None)
    assert adder.can_run_list == [part, done] and adder.new_chunked_req is part


def test_plain_sglang_adder_would_sample_the_partial_request(sched: SimpleNamespace) -> None:
    from sglang.srt.managers.schedule_policy import PrefillAdder

    part = _open(sched, "part", [1, 2, 3, 4])
    part.init_next_round_input(sched.tree_cache)
    adder = PrefillAdder(1, sched.tree_cache, sched.allocator, None, 0.5, 256, 64)
    adder.add_one_req(part, False, None)
    assert adder.new_chunked_req is None  # i.e. SGLang would sample it: why we subclass


def test_policy_orders_the_waiting_queue(sched: SimpleNamespace) -> None:
    a = _open(sched, "a", [1, 2])
    _open(sched, "b", [3, 4], final=True)
    c = _open(sched, "c", [5, 6])
    plain = Req("plain", "", array("q", [7]), SamplingParams(max_new_tokens=1))
    sched.waiting_queue.append(plain)
    order_waiting_queue(sched.waiting_queue)
    rids = [r.rid for r in sched.waiting_queue]
    assert rids[:2] == ["b", "plain"] and set(rids[2:]) == {"a", "c"}
    assert a in sched.waiting_queue and c in sched.waiting_queue


def test_retraction_order_and_mode(sched: SimpleNamespace) -> None:
    reqs = [_open(sched, r, [1] * n, final=True) for r, n in (("x", 4), ("y", 8), ("z", 2))]
    order = stream_retraction_order(reqs)
    t = state.table()
    keys = [t.key(reqs[i]) for i in order]
    assert keys == sorted(keys)  # SGLang pops the last: our lowest-ranked request
    assert order[-1] == 2  # opened last -> lowest priority under "ours" (by first chunk)
    assert retract_mode(reqs[0]) == "recompute"  # no cost model: SGLang's only mode
    t.cost_model = CostModel.load("h100-tp2-llama3-8b")
    reqs[1].kv.kv_committed_len = 4096
    expect = t.cost_model.recompute_or_swap(4096)
    assert retract_mode(reqs[1]) == expect
