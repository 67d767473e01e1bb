"""What happens to streams between two of SGLang's scheduling steps.

An AROUND hook on ``Scheduler.get_next_batch_to_run``, which SGLang calls once a
step before it merges the last prefill batch into the running (decode) batch:

1. ``hold_back``: partial streams of the last batch leave it, so they are never
   merged into decode (the chunked request gets the same treatment from SGLang).
2. ``settle``: a partial stream whose step has been processed (its
   ``inflight_middle_chunks`` is back to 0; one step later under overlap
   scheduling) is parked: its KV goes into the tree, pinned
   (``kv.park``). A pending update is cut at the LCP now; with more input
   received meanwhile, or its final chunk, it goes straight back to the queue.
   One aborted while in the forward is released here.
3. ``pressure.make_room``: idle streams give way when the next request would
   not fit; swapped streams come back when there is room.
4. Holds of young versions are lifted when nothing else could run
   (work-conserving, as the planner's walk).
"""

from __future__ import annotations

from typing import Any

import radix_stream._sglang  # noqa: F401

from sglang.srt.mem_cache.common import release_kv_cache

from srt_ext.engines.sglang import kv, pressure
from srt_ext.engines.sglang.messages import release_parked
from srt_ext.engines.sglang.state import StreamTable, table
from stream2llm.lcp import common_prefix_len


def hold_back(t: StreamTable, last_batch: Any) -> None:
    if last_batch is None or not t.unsampled or not last_batch.reqs:
        return
    held = [r for r in last_batch.reqs if r.rid in t.unsampled]
    if held:
        last_batch.filter_batch(reqs_to_exclude=held)


def settle(scheduler: Any, t: StreamTable) -> None:
    tree = scheduler.tree_cache
    for rid, req in list(t.unsampled.items()):
        if req.inflight_middle_chunks > 0:
            continue  # overlap scheduling: its result is not processed yet
        del t.unsampled[rid]
        info = t.streams.get(rid)
        if info is None:  # ended meanwhile (SGLang's own abort path)
            if req.kv.holds_kv:
                release_kv_cache(req, tree, checkpoint=False)
            continue
        done = kv.park(t, info, req, tree)
        if info.aborted:
            release_parked(scheduler, rid, "aborted")
            continue
        if info.pending_input is not None:
            new, info.pending_input = info.pending_input, None
            cut = kv.cut_to(tree, info, common_prefix_len(req.origin_input_ids, new))
            info.tokens_invalidated += cut
            t.tokens_invalidated += cut
            kv.set_input(req, new)
            done = kv.computed(tree, info)
        if info.final or len(req.origin_input_ids) > done:
            kv.unpark(t, info, req, scheduler.waiting_queue)


def holds_lifted(scheduler: Any, t: StreamTable, running_batch: Any) -> bool:
    """True when every queued request is a held partial stream and nothing runs:
    an idle engine costs the same, so the hold defers nothing."""
    if not t.planner.holds or not scheduler.waiting_queue:
        return False
    if getattr(running_batch, "reqs", None) or scheduler.chunked_req is not None:
        return False
    now = t.clock()
    for req in scheduler.waiting_queue:
        info = t.streams.get(req.rid)
        if info is None or info.final:
            return False
        until = t.policy.hold_until(t.as_stream(req), now)
        if until is None or until <= now:
            return False
    return True


def next_batch_around(original: Any, scheduler: Any, running_batch: Any, last_batch: Any,
                      *a: Any, **k: Any) -> Any:  # fmt: skip
    """``HookType.AROUND`` on ``Scheduler.get_next_batch_to_run``."""
    t = table()
    if t.streams or t.unsampled:
        hold_back(t, last_batch)
        settle(scheduler, t)
        pressure.make_room(scheduler, t, running_batch)
        t.holds_off = holds_lifted(scheduler, t, running_batch)
    return original(scheduler, running_batch, last_batch, *a, **k)
