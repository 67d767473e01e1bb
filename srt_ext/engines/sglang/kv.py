"""KV moves a stream needs that SGLang's scheduler has no word for.

*Parking*: a partial stream whose received input is all computed leaves
SGLang's queues (it must not be sampled, and SGLang would otherwise either
sample it or keep it as its single ``chunked_req`` forever). Its KV goes into
the tree through SGLang's own ``release_kv_cache(checkpoint=True)`` and we pin
the path with one tree lock, so LRU eviction leaves it alone; the next chunk
re-queues the request and ``init_next_round_input`` matches the cached prefix.

*Cutting*: an update replaces the input; the pinned path is truncated to the
longest common prefix with ``StreamingRadixCache.cut_path`` (the cut StreamKVCache
uses too), which frees the part below at once (not left to LRU).

*Preempting* a parked stream under memory pressure: ``drop`` frees the part of
its path nobody else holds (recompute later), ``swap_out`` first copies the
whole path's KV to host memory with the KV pool's own ``get_cpu_copy`` and
``swap_in`` allocates slots, loads the copy back (``load_cpu_copy``) and
re-inserts the path into the tree, pinned, before the stream is admitted again.
"""

from __future__ import annotations

from array import array
from typing import Any

import torch

from srt_ext.engines.sglang.state import StreamInfo, StreamTable


def pin(tree: Any, info: StreamInfo, node: Any) -> None:
    """Hold one lock on ``node`` for ``info`` (replacing any previous pin)."""
    unpin(tree, info)
    if node is not None and node is not tree.root_node:
        tree.inc_lock_ref(node)
        info.pin = node


def unpin(tree: Any, info: StreamInfo) -> None:
    if info.pin is not None:
        tree.dec_lock_ref(info.pin)
        info.pin = None


def cut_to(tree: Any, info: StreamInfo, lcp: int) -> int:
    """Truncate the pinned path to ``lcp`` tokens (page aligned down), freeing
    the exclusive part below the cut now (``tree.cut_path``, as StreamKVCache
    does). Returns cached tokens invalidated."""
    node = info.pin
    if node is None:
        return 0
    depth = tree.depth(node)
    keep = min(lcp, depth) // tree.page_size * tree.page_size
    if keep == depth:
        return 0
    cut, _ = tree.cut_path(node, keep)
    info.pin = cut if cut is not tree.root_node else None
    return depth - keep


def park(table: StreamTable, info: StreamInfo, req: Any, tree: Any) -> int:
    """Move a computed partial request out of SGLang's queues into the tree.

    Pins the node that ends where the computed KV ends (``checkpoint`` leaves it
    in ``req.last_node``), not what ``init_next_round_input`` matches afterwards:
    SGLang matches at most ``len(input) - 1`` tokens so that one is left to
    compute for the logits, and judging "all computed" by that match would
    re-queue the stream at once and recompute its last token forever.
    Returns the computed (pinned) length.
    """
    from sglang.srt.mem_cache.common import release_kv_cache

    if req.kv.holds_kv:
        release_kv_cache(req, tree, checkpoint=True)
        pin(tree, info, req.last_node)
    req.init_next_round_input(tree)  # match what the tree now holds
    if info.pin is None:  # never admitted: pin what it matched
        pin(tree, info, req.last_node)
    info.parked = True
    table.parked[req.rid] = req
    # SGLang's ``meta_info.cached_tokens`` adds ``prefix - already_computed`` at each
    # admission, which goes negative once a cut leaves less than was computed. For a
    # stream it should say what the final input found computed: count from zero again.
    req.cached_tokens = req.already_computed = 0
    return computed(tree, info)


def computed(tree: Any, info: StreamInfo) -> int:
    """Tokens of the stream's input whose KV its pin keeps in the tree."""
    return tree.depth(info.pin) if info.pin is not None else 0


def unpark(table: StreamTable, info: StreamInfo, req: Any, waiting_queue: list) -> None:
    """Back to SGLang's waiting queue; the pin stays until admission re-locks."""
    table.parked.pop(req.rid, None)
    info.parked = False
    if req not in waiting_queue:
        waiting_queue.append(req)


def set_input(req: Any, ids: array) -> None:
    """Replace ``req``'s input and rebuild its fill ids now.

    Rebuilt, not emptied: a request whose chunk is in a forward gets
    ``checkpoint``-ed (``stash_chunked_request``) from ``full_untruncated_fill_ids``
    before anything refreshes it, and an empty array there inserts nothing and
    then frees the KV that the tree still holds (a double free, caught by
    SGLang's idle pool check). ``refresh_fill_ids`` alone would keep a stale
    array of the same length."""
    req.origin_input_ids = ids
    req.origin_input_ids_unpadded = ids
    req.full_untruncated_fill_ids = ids + array("q", req.output_ids)


def path_tokens(tree: Any, node: Any) -> array:
    """The token ids on the path from the root to the end of ``node``."""
    out = array("q")
    for n in tree.path_nodes(node):
        out.extend(n.key.token_ids)
    return out


def drop(tree: Any, info: StreamInfo) -> int:
    """Unpin a parked stream and free its exclusive KV now; returns tokens freed.
    What the stream shares with others stays cached (and evictable)."""
    node = info.pin
    if node is None:
        return 0
    before = tree.token_to_kv_pool_allocator.available_size()
    tree.cut_path(node, 0)  # the lock moves to the root: none is held
    info.pin = None
    return int(tree.token_to_kv_pool_allocator.available_size() - before)


def swap_out(tree: Any, info: StreamInfo) -> int:
    """Copy the pinned path's KV to host memory, then ``drop`` it; returns the
    tokens copied."""
    node = info.pin
    if node is None:
        return 0
    slots = torch.cat([n.value for n in tree.path_nodes(node)])
    info.host_kv = tree.token_to_kv_pool_allocator.get_kvcache().get_cpu_copy(slots)
    info.host_tokens = path_tokens(tree, node)
    drop(tree, info)
    return len(info.host_tokens)


def swap_in(tree: Any, info: StreamInfo, extra_key: str | None) -> int:
    """Load a swapped-out path back into fresh slots and pin it; returns the
    tokens loaded (0 when the pool cannot hold them now: try again later)."""
    tokens = info.host_tokens
    n = len(tokens)
    alloc = tree.token_to_kv_pool_allocator
    if alloc.available_size() < n:
        tree.evict_tokens(n - alloc.available_size())
    slots = alloc.alloc(n) if alloc.available_size() >= n else None
    if slots is None:
        return 0
    alloc.get_kvcache().load_cpu_copy(info.host_kv, slots)
    last, dup = tree.extend_from(tree.root_node, tokens, slots, extra_key)
    if dup:  # that prefix is cached already: the tree keeps its own slots
        alloc.free(slots[:dup])
    pin(tree, info, last)
    info.host_kv = info.host_tokens = None
    return n
