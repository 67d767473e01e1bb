"""Prefill admission for streams: our policy's order, and no sampling of partial input.

SGLang 0.5.23 builds its adder with ``Scheduler.get_prefill_adder_class()`` and
walks ``waiting_queue`` in the order ``SchedulePolicy.calc_priority`` left it.
So ordering is a re-sort after ``calc_priority`` (``order_waiting_queue``), and
admission is a ``PrefillAdder`` subclass.

The only way 0.5.23 prefills a request without sampling it is the chunked-prefill
path: an admission with ``is_chunked`` becomes the scheduler's one ``chunked_req``,
its batch rows count as ``inflight_middle_chunks`` and the result processor skips
sampling them. A partial stream is therefore always admitted as a chunk, only
while that one slot is free; when it has nothing left to compute it is parked
(``kv.park``) rather than left in the slot, and a later chunk re-queues it.
"""

from __future__ import annotations

from typing import Any

import radix_stream._sglang  # noqa: F401

from sglang.srt.managers.schedule_policy import (
    AddReqResult,
    PrefillAdder,
    _PrefillAdmission,
)

from srt_ext.engines.sglang import kv
from srt_ext.engines.sglang.state import StreamTable, table
from stream2llm.lcp import common_prefix_len


def order_waiting_queue(waiting_queue: list, t: StreamTable | None = None) -> None:
    """Sort SGLang's waiting queue in place by our policy key (ascending = first)."""
    t = t or table()
    now = t.clock()
    waiting_queue.sort(key=lambda req: t.key(req, now))


def calc_priority_after(result: Any, policy: Any, waiting_queue: list, *a: Any, **k: Any) -> Any:
    """``HookType.AFTER`` hook on ``SchedulePolicy.calc_priority``."""
    order_waiting_queue(waiting_queue)
    return result


def _nothing_to_compute(req: Any) -> bool:
    return len(req.full_untruncated_fill_ids) - (req.prefix_len or 0) <= 0


class StreamPrefillAdder(PrefillAdder):
    """``PrefillAdder`` that prefills partial streams only as unsampled chunks."""

    def _select_prefill_admission(self, req: Any, **kwargs: Any) -> Any:
        admission = super()._select_prefill_admission(req, **kwargs)
        if not isinstance(admission, _PrefillAdmission):
            return admission
        partial_input = table().is_partial(req)
        if not (admission.is_chunked or partial_input):
            return admission
        # One chunked request per scheduler (0.5.23): skip, keep it queued.
        if kwargs.get("has_chunked_req") or self.new_chunked_req is not None:
            return AddReqResult.CONTINUE
        if partial_input and not admission.is_chunked:
            return _PrefillAdmission(
                admission.prefix_len, admission.extend_len, 0, True, admission.replay_len
            )
        return admission

    def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: Any) -> Any:
        res = super().add_one_req(req, has_chunked_req, truncation_align_size)
        info = table().streams.get(req.rid)
        if info is not None and self.can_run_list and self.can_run_list[-1] is req:
            kv.unpin(self.tree_cache, info)  # admission holds its own lock now
        return res

    def add_chunked_req(self, req: Any) -> Any:
        t = table()
        info = t.streams.get(req.rid)
        if info is not None and info.is_stream and (
            _nothing_to_compute(req) or info.pending_input is not None
        ):
            done = kv.park(t, info, req, self.tree_cache)
            if info.pending_input is not None:
                new, info.pending_input = info.pending_input, None
                cut = kv.cut_to(self.tree_cache, info, common_prefix_len(req.origin_input_ids, new))
                info.tokens_invalidated += cut
                t.tokens_invalidated += cut
                kv.set_input(req, new)
                done = kv.computed(self.tree_cache, info)
            if info.final or len(req.origin_input_ids) > done:
                queue = t.scheduler.waiting_queue if t.scheduler is not None else []
                kv.unpark(t, info, req, queue)
            return None  # the scheduler's chunked_req slot is free again
        ret = super().add_chunked_req(req)
        if ret is None and t.is_partial(req) and req in self.can_run_list:
            return req  # last received tokens: still a middle chunk, not sampled
        return ret


def get_prefill_adder_class(scheduler: Any) -> type[PrefillAdder]:
    """``HookType.REPLACE`` for ``Scheduler.get_prefill_adder_class``."""
    return StreamPrefillAdder
