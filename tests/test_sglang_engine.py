"""The SGLang-engine hooks, driven on CPU with SGLang 0.5.23's own objects:
real ``Req``, ``PrefillAdder`` (our subclass), ``TokenToKVPoolAllocator``,
``ReqToTokenPool``, ``TypeBasedDispatcher``, msgpack IPC and ``HookRegistry``.
The scheduler loop itself (forward passes, parking of computed KV) runs in the
SGLang server tests (test_engines_api.py, test_server_exact.py)."""

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
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.runtime_context import _CONTEXT
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.utils import TypeBasedDispatcher

from radix_stream.tree import StreamingRadixCache
from srt_ext.engines.sglang import kv, lifecycle, state
from srt_ext.engines.sglang.adder import StreamPrefillAdder, order_waiting_queue
from srt_ext.engines.sglang.messages import (
    StreamAbortReq,
    StreamChunkOutput,
    StreamChunkReq,
    StreamOpenReq,
    install_stream_handlers,
)
from srt_ext.engines.sglang.retract import (
    retract_decode_around,
    retract_mode,
    stream_retraction_order,
)


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
                        allocator=alloc, token_to_kv_pool_allocator=alloc, chunked_req=None,
                        running_batch=None, _request_dispatcher=TypeBasedDispatcher([]),
                        aborted=[], abort_outputs=[], max_req_input_len=100)

    def handle_generate_request(recv: TokenizedGenerateReqInput) -> None:  # as SGLang's
        s.waiting_queue.append(Req(recv.rid, "", array("q", recv.input_ids),
                                   SamplingParams(max_new_tokens=4)))

    def abort_request(recv: object) -> None:
        s.aborted.append(recv.rid)  # type: ignore[attr-defined]
        s.waiting_queue[:] = [r for r in s.waiting_queue if r.rid != recv.rid]  # type: ignore[attr-defined]

    def send_abort_output(abort_req: object, req: Req) -> None:  # to the tokenizer side
        s.abort_outputs.append((req.rid, abort_req.finished_reason))  # type: ignore[attr-defined]

    s.handle_generate_request = handle_generate_request
    s.abort_request = abort_request
    s.send_abort_output = send_abort_output
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
    out = sched._request_dispatcher(StreamAbortReq(rid="p"))
    assert out.error is None and out.input_tokens == 3
    assert tree.protected_size() == 0 and "p" not in t.streams and "p" not in t.parked
    # SGLang's abort cannot see a parked request: we tell the tokenizer side ourselves
    assert sched.abort_outputs == [("p", {"type": "abort", "message": "aborted by the client"})]
    q = _open(sched, "q", [4])
    sched._request_dispatcher(StreamAbortReq(rid="q"))  # queued: SGLang's abort path
    assert sched.aborted == ["q"] and q not in sched.waiting_queue and "q" not in t.streams
    assert sched._request_dispatcher(StreamAbortReq(rid="q")).status == 404


def test_abort_all_reaches_parked_streams_and_flush_waits_for_them(sched: SimpleNamespace) -> None:
    """``Scheduler.abort_request`` (AFTER hook) and ``flush_cache`` (AROUND hook):
    a parked stream is in none of SGLang's queues."""
    from sglang.srt.managers.io_struct import AbortReq

    tree, alloc = sched.tree_cache, sched.allocator
    req = _open(sched, "p", [1, 2, 3])
    sched.waiting_queue.remove(req)
    last, _ = tree.extend_from(tree.root_node, array("q", [1, 2, 3]), alloc.alloc(3), None)
    t = state.table()
    kv.pin(tree, t.streams["p"], last)
    t.parked["p"] = req
    flushed: list[bool] = []
    assert lifecycle.flush_cache_around(lambda s: flushed.append(True) or True, sched) is False
    assert not flushed and tree.protected_size() == 3  # a reset would free pinned KV
    lifecycle.abort_request_after(None, sched, AbortReq(abort_all=True))
    assert tree.protected_size() == 0 and not t.streams and [r for r, _ in sched.abort_outputs] == ["p"]
    assert lifecycle.flush_cache_around(lambda s: True, sched) is True


def test_stream_entries_end_with_their_request(sched: SimpleNamespace) -> None:
    """Finished (output streamer) and SGLang-aborted (send_abort_output) streams
    leave the table; one-shot requests never enter it."""
    from sglang.srt.managers.schedule_batch import FINISH_LENGTH

    a = _open(sched, "a", [1, 2], final=True)
    b = _open(sched, "b", [3, 4])
    c = _open(sched, "c", [5])
    a.finished_reason = FINISH_LENGTH(length=4)
    sent: list[list[str]] = []
    lifecycle.stream_output_around(lambda _s, reqs, *a: sent.append([r.rid for r in reqs]),
                                   None, [a, b])  # fmt: skip
    assert sent == [["a", "b"]]
    assert set(state.table().streams) == {"b", "c"}  # b is not finished
    lifecycle.send_abort_output_after(None, sched, None, c)
    assert set(state.table().streams) == {"b"}
    plain = [Req(f"g{i}", "", array("q", [7, i]), SamplingParams(max_new_tokens=1))
             for i in range(50)]
    sched.waiting_queue[:] = plain
    for _ in range(3):
        order_waiting_queue(sched.waiting_queue)
    assert set(state.table().streams) == {"b"}  # no entry per one-shot request
    t = state.table()
    assert t.as_stream(plain[0]).seq == t.as_stream(plain[0]).seq  # stable while it lives


def _adder(s: SimpleNamespace, chunk: int = 64) -> StreamPrefillAdder:
    return StreamPrefillAdder(1, s.tree_cache, s.allocator, None, 0.5, 256, chunk)


def test_every_partial_stream_is_prefilled_unsampled_in_one_batch(sched: SimpleNamespace) -> None:
    """Partial streams are ordinary rows of the batch (SGLang's one chunked slot
    stays free), marked so SGLang's result processor samples none of them, with
    no decode memory reserved; a final stream beside them is admitted as usual."""
    part = _open(sched, "part", [1, 2, 3, 4])
    part2 = _open(sched, "part2", [5, 6])
    done = _open(sched, "done", [7, 8, 9], final=True)
    adder = _adder(sched)
    for req in (part, part2, done):
        req.init_next_round_input(sched.tree_cache)
    budget = adder.rem_total_tokens
    for req in (part, part2, done):
        adder.add_one_req(req, False, None)
    assert adder.can_run_list == [part, part2, done] and adder.new_chunked_req is None
    assert (part.extend_end, part2.extend_end, done.extend_end) == (4, 2, 3)
    assert [r.inflight_middle_chunks for r in (part, part2, done)] == [1, 1, 0]
    assert set(state.table().unsampled) == {"part", "part2"}
    # the partial rows cost their input only; the final one its input + decode reserve
    assert budget - adder.rem_total_tokens < 4 + 2 + 3 + 4 + 3 * 8


def test_partial_prefill_is_cut_to_the_chunk_budget_not_chunked(sched: SimpleNamespace) -> None:
    """A partial stream larger than the step's budget is prefilled in part, still
    as a plain unsampled row (the rest follows in later steps)."""
    big = _open(sched, "big", list(range(1, 91)))
    big.init_next_round_input(sched.tree_cache)
    adder = _adder(sched, chunk=32)
    adder.add_one_req(big, False, None)
    assert adder.can_run_list == [big] and adder.new_chunked_req is None
    assert big.extend_end == 32 and big.inflight_middle_chunks == 1


def test_plain_sglang_adder_would_sample_the_partial_request(sched: SimpleNamespace) -> None:
    from sglang.srt.managers.schedule_policy import PrefillAdder

    part = _open(sched, "part", [1, 2, 3, 4])
    part.init_next_round_input(sched.tree_cache)
    adder = PrefillAdder(1, sched.tree_cache, sched.allocator, None, 0.5, 256, 64)
    adder.add_one_req(part, False, None)
    assert adder.new_chunked_req is None  # i.e. SGLang would sample it: why we subclass


def test_ours_orders_complete_inputs_by_remaining_work(sched: SimpleNamespace) -> None:
    """``ours`` ranks complete inputs by remaining prefill minus aging from the
    moment each became final (``final_s``): a 10-token input that arrived later
    goes before a 100K-token one, and partial inputs go after both."""
    big = _open(sched, "big", [1] * 100_000, final=True)
    part = _open(sched, "part", [2, 3])
    small = _open(sched, "small", [4] * 10, final=True)
    plain = Req("plain", "", array("q", [7] * 20), SamplingParams(max_new_tokens=1))
    sched.waiting_queue.append(plain)
    order_waiting_queue(sched.waiting_queue)
    assert [r.rid for r in sched.waiting_queue] == ["small", "plain", "big", "part"]
    assert big in sched.waiting_queue and part in sched.waiting_queue and small is not big
    # aging: 100K tokens are ~1.7 s of work at TOKENS_PER_S; after 20 s of waiting
    # the big input outranks a newly complete short one
    state.table().clock.t += 20.0
    _open(sched, "late", [5] * 10, final=True)
    order_waiting_queue(sched.waiting_queue)
    rids = [r.rid for r in sched.waiting_queue]
    assert rids.index("big") < rids.index("late")


def test_retraction_victim_is_our_lowest_ranked(sched: SimpleNamespace) -> None:
    """SGLang pops the last index: the victim is the request ``ours`` ranks lowest,
    here the one with 2 s of prefill left, though it is not the newest; the input
    complete for 30 s is kept first."""
    t = state.table()
    old = _open(sched, "old", [1] * 40, final=True)
    t.clock.t += 30.0
    big = _open(sched, "big", [1] * 120_000, final=True)
    new = _open(sched, "new", [1] * 40, final=True)
    assert stream_retraction_order([old, big, new]) == [0, 2, 1]


def test_retract_mode_follows_the_cost_model(sched: SimpleNamespace) -> None:
    reqs = [_open(sched, r, [1] * 4, final=True) for r in ("x", "y")]
    assert retract_mode(reqs[0]) == "recompute"  # no cost model: SGLang's only mode
    # recompute costs 1 ms/token, a swap 50 ms flat: recompute below 50 tokens
    state.table().cost_model = SimpleNamespace(prefill_s=lambda n: n * 1e-3,  # type: ignore[assignment]
                                               swap_s=lambda n: 0.05)  # fmt: skip
    reqs[0].kv.kv_committed_len, reqs[1].kv.kv_committed_len = 10, 1000
    assert retract_mode(reqs[0]) == "recompute" and retract_mode(reqs[1]) == "swap"


def test_retract_decode_around_counts_each_victims_decision(sched: SimpleNamespace) -> None:
    """SGLang's retraction frees the victims' KV: counted as the recomputes they are,
    whatever the cost model would have picked."""
    reqs = [_open(sched, r, [1] * 4, final=True) for r in ("x", "y", "z")]
    state.table().cost_model = SimpleNamespace(prefill_s=lambda n: n * 1e-3,  # type: ignore[assignment]
                                               swap_s=lambda n: 0.05)  # fmt: skip
    for req, n in zip(reqs, (10, 1000, 2000), strict=True):
        req.kv.kv_committed_len = n

    def original(batch: SimpleNamespace) -> tuple[list, float, list]:
        victims = batch.reqs[1:]  # what SGLang retracted
        for r in victims:
            r.kv.kv_committed_len = 0  # release_req resets it
        return victims, 0.5, []

    retracted, ratio, aborted = retract_decode_around(original, SimpleNamespace(reqs=reqs))
    assert [r.rid for r in retracted] == ["y", "z"] and ratio == 0.5 and aborted == []
    assert state.table().decisions == {"recompute": 2, "swap": 0}
