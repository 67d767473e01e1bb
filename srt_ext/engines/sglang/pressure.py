"""Memory pressure inside SGLang's scheduler: idle streams give way.

SGLang preempts only what it runs (decode retraction). A parked stream, or one
waiting in the queue with its path pinned, is invisible to it, and its pin keeps
LRU eviction away: streams that merely wait for their next chunk could fill the
pool and stall every request (a deadlock when they alone fill it). So before
each step ``make_room`` checks what the request that must run next needs (the
first in our policy's order, plus one slot per decoding request) against what is
free or evictable, and preempts idle streams ranked below it, lowest first, by
the same victim order and recompute-or-swap rule the simulator uses
(``Policy.victim_key``, ``PreemptionRule``). When nothing ranked below is left
and the engine would otherwise idle, any idle stream gives way: progress first.

A swapped-out stream is admitted again only after ``restore`` loaded its KV back
(``kv.swap_in``), which happens as soon as the pool has room for it.
"""

from __future__ import annotations

from typing import Any

import radix_stream._sglang  # noqa: F401

from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

from scheduler.preemption import PreemptionRule
from srt_ext.engines.sglang import kv
from srt_ext.engines.sglang.state import StreamInfo, StreamTable


def rule(t: StreamTable) -> PreemptionRule:
    """The preemption rule configured for this scheduler (cost needs a model)."""
    mode = getattr(t, "preemption", "cost")
    if mode == "cost" and t.cost_model is None:
        mode = "recompute"
    return PreemptionRule(mode=mode, cost_model=t.cost_model)


def _need(scheduler: Any, t: StreamTable, head: Any) -> int:
    """Slots SGLang's adder must see free to admit ``head``: the swapped path it
    must load first; for a partial stream its next slice (its admission reserves
    nothing more, ``StreamPrefillAdder``); else, as SGLang's own budget test, all
    its remaining input plus its decode reservation."""
    info = t.streams.get(head.rid)
    if info is not None and info.host_kv is not None:
        return len(info.host_tokens)
    tree = scheduler.tree_cache
    _, cached = tree.match_from(tree.root_node, head.origin_input_ids, head.extra_key)
    todo = len(head.origin_input_ids) - cached
    if info is not None and not info.final:
        chunk = getattr(scheduler, "chunked_prefill_size", None) or 0
        return (min(todo, chunk) if chunk > 0 else todo) + 2 * tree.page_size
    return todo + _decode_reserve(head, 1.0) + 2 * tree.page_size


def _decode_reserve(req: Any, ratio: float) -> int:
    """Decode slots SGLang's adder sets aside for ``req`` (its own formula)."""
    left = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
    return int(min(left, CLIP_MAX_NEW_TOKENS) * ratio)


def _free(scheduler: Any, running_batch: Any = None) -> int:
    """Free or evictable slots, less what the decoding requests have reserved."""
    alloc, tree = scheduler.token_to_kv_pool_allocator, scheduler.tree_cache
    ratio = float(getattr(scheduler, "new_token_ratio", 1.0) or 1.0)
    reserved = sum(_decode_reserve(r, ratio) for r in getattr(running_batch, "reqs", None) or [])
    return int(alloc.available_size() + tree.evictable_size()) - reserved


def idle_streams(t: StreamTable, busy: set[str]) -> list[StreamInfo]:
    """Streams holding pinned KV and not in a forward: parked or queued."""
    return [i for i in t.streams.values()
            if i.pin is not None and i.rid not in busy and i.req is not None]  # fmt: skip


def victims(t: StreamTable, head: Any, idle: list[StreamInfo], engine_idle: bool) -> list[StreamInfo]:
    """Idle streams that may give way to ``head``, first victim first."""
    now = t.clock()
    order = sorted(idle, key=lambda i: t.victim_rank(i.req, now))
    if head is None:
        return order
    head_key = t.key(head, now)
    below = [i for i in order if i.req is not head and t.key(i.req, now) > head_key]
    if below or not engine_idle:
        return below
    return [i for i in order if i.req is not head]


def preempt(scheduler: Any, t: StreamTable, info: StreamInfo, scheduled: int) -> int:
    """Preempt one idle stream as the rule says; returns slots freed."""
    tree = scheduler.tree_cache
    held = kv.computed(tree, info)
    mode = rule(t).choose(held, scheduled)
    before = _free(scheduler)
    if mode == "swap":
        t.swapped_out_tokens += kv.swap_out(tree, info)
    else:
        kv.drop(tree, info)
    t.decisions[mode] += 1
    return _free(scheduler) - before


def make_room(scheduler: Any, t: StreamTable, running_batch: Any) -> None:
    """Preempt idle streams until the next request (and the decode batch) fits,
    then bring swapped-out queued streams back in while that still leaves it room."""
    busy = set(t.unsampled)
    busy.update(r.rid for r in getattr(running_batch, "reqs", None) or [])
    if scheduler.chunked_req is not None:
        busy.add(scheduler.chunked_req.rid)
    now = t.clock()
    waiting = scheduler.waiting_queue
    head = min(waiting, key=lambda r: t.key(r, now)) if waiting else None
    need = _need(scheduler, t, head) if head is not None else 0
    decoding = len(getattr(running_batch, "reqs", None) or [])
    # the next request against what decoding leaves it; the next decode step
    # against the slots themselves (SGLang retracts only when those run out)
    short = max(need - _free(scheduler, running_batch),
                decoding * scheduler.tree_cache.page_size - _free(scheduler))  # fmt: skip
    if short > 0:
        engine_idle = decoding == 0 and scheduler.chunked_req is None and not t.unsampled
        for info in victims(t, head, idle_streams(t, busy), engine_idle):
            short -= preempt(scheduler, t, info, need)
            if short <= 0:
                break
    restore(scheduler, t, head, need, running_batch)


def restore(scheduler: Any, t: StreamTable, head: Any, need: int, running_batch: Any) -> None:
    """Swap queued streams back in, in policy order: the head whenever its path
    fits (its need is that path), any other only with room beyond the head's need,
    so a swap-in never undoes the room just made."""
    now = t.clock()
    tree = scheduler.tree_cache
    for req in sorted(scheduler.waiting_queue, key=lambda r: t.key(r, now)):
        info = t.streams.get(req.rid)
        if info is None or info.host_kv is None:
            continue
        spare = 0 if req is head else need
        if _free(scheduler, running_batch) - spare < len(info.host_tokens) + tree.page_size:
            return
        n = kv.swap_in(tree, info, req.extra_key)
        if n == 0:
            return
        t.swapped_in_tokens += n
