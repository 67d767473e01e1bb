"""Prefill admission for streams: our policy's order, and no sampling of partial input.

SGLang 0.5.23 builds its adder with ``Scheduler.get_prefill_adder_class()`` and
walks ``waiting_queue`` in the order ``SchedulePolicy.calc_priority`` left it.
So ordering is a re-sort after ``calc_priority`` (``order_waiting_queue``), and
admission is a ``PrefillAdder`` subclass.

A partial stream (no final chunk yet) is admitted as an ordinary request of the
batch, not as SGLang's single ``chunked_req``: every partial stream can be
prefilled in the same step. Its admission reserves no decode memory
(``max_new_tokens`` 0), may cover only part of its received input (the chunk
budget, the policy's cap, as the planner decides), and raises the request's
``inflight_middle_chunks``, which is what SGLang's batch-result processor reads
to leave a row unsampled. After the step it leaves the batch and is parked
(``steps``), never merged into the running (decode) batch.
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


def order_waiting_queue(waiting_queue: list, t: StreamTable | None = None) -> None:
    """Sort SGLang's waiting queue in place by our policy key (ascending = first)."""
    t = t or table()
    now = t.clock()
    waiting_queue.sort(key=lambda req: t.key(req, now))


def calc_priority_after(result: Any, policy: Any, waiting_queue: list, *a: Any, **k: Any) -> Any:
    """``HookType.AFTER`` hook on ``SchedulePolicy.calc_priority``."""
    order_waiting_queue(waiting_queue)
    return result


class StreamPrefillAdder(PrefillAdder):
    """``PrefillAdder`` that prefills partial streams as unsampled rows of the batch."""

    def _select_prefill_admission(self, req: Any, **kwargs: Any) -> Any:
        t = table()
        info = t.streams.get(req.rid)
        if info is not None and info.host_kv is not None:
            return AddReqResult.CONTINUE  # swapped out: admitted after its KV is back
        admission = super()._select_prefill_admission(req, **kwargs)
        if not isinstance(admission, _PrefillAdmission) or not t.is_partial(req):
            return admission
        n = t.planned_partial(req, admission.extend_len, self._partial_planned)
        n = n // self.page_size * self.page_size
        if n <= 0:
            return AddReqResult.CONTINUE  # held back or capped: others may still run
        return _PrefillAdmission(admission.prefix_len, n, 0, False, admission.replay_len)

    def _check_prefill_budget(self, req: Any, *, extend_input_len: int, total_tokens: int,
                              chunk_limit: int | None, **kwargs: Any) -> tuple[bool, int | None]:  # fmt: skip
        """SGLang admits a request only if all its remaining input and its decode
        reservation fit. A partial stream needs neither: the slice that fits
        memory now (and the step's chunk) is prefilled, the rest in later steps."""
        if not table().is_partial(req):
            return super()._check_prefill_budget(req, extend_input_len=extend_input_len,
                                                 total_tokens=total_tokens,
                                                 chunk_limit=chunk_limit, **kwargs)  # fmt: skip
        page = self.page_size
        room = int(self.rem_total_tokens) - 2 * page  # SGLang's test is strict
        part = min(extend_input_len, room, chunk_limit if chunk_limit is not None else room)
        part = part // page * page
        if part <= 0:
            return False, None
        ok, limit = super()._check_prefill_budget(req, extend_input_len=part, total_tokens=part + page,
                                                  chunk_limit=chunk_limit, **kwargs)  # fmt: skip
        return (True, part if limit is None else min(limit, part)) if ok else (False, None)

    @property
    def _partial_planned(self) -> int:
        """Tokens of partial input this adder admitted so far (the planner's cap)."""
        return sum(r.extend_end - r.prefix_len for r in self.can_run_list
                   if table().is_partial(r))  # fmt: skip

    def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: Any) -> Any:
        res = super().add_one_req(req, has_chunked_req, truncation_align_size)
        if not (self.can_run_list and self.can_run_list[-1] is req):
            return res
        t = table()
        info = t.streams.get(req.rid)
        if info is not None:
            kv.unpin(self.tree_cache, info)  # admission holds its own lock now
            if not info.final:
                req.inflight_middle_chunks += 1  # SGLang samples no row that has one
                t.unsampled[req.rid] = req
        return res


def get_prefill_adder_class(scheduler: Any) -> type[PrefillAdder]:
    """``HookType.REPLACE`` for ``Scheduler.get_prefill_adder_class``."""
    return StreamPrefillAdder
