"""Per-stream KV bookkeeping, part 3 of 3: memory pressure (the public class).

``StreamKVCache`` is what schedulers and engines use (its interface is
``scheduler.kv_protocol.KVManager``). This layer decides what preempting a stream
frees (``held_tokens``, ``held_by_rank``, ``holds_beyond``), preempts it
(recompute: drop; swap: copy to the host pool first), and makes it resident again
(``resume``, ``pin``/``unpin``). See kv_pool.py for the layout of a stream's KV.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from radix_stream.kv_audit import check_stream_kv
from radix_stream.kv_compute import KVCompute
from radix_stream.kv_records import (
    KVMover,
    PreemptMode,
    PreemptResult,
    StreamKVError,
    StreamRecord,
    SwappedKV,
)


class StreamKVCache(KVCompute):
    """KV slots of streaming requests: reserve, commit, truncate, preempt."""

    @classmethod
    def create(
        cls,
        capacity_tokens: int,
        page_size: int = 1,
        mover: KVMover | None = None,
        host_capacity_tokens: int | None = None,
    ) -> StreamKVCache:
        """A pool of slot indices only, no KV tensors (simulator and tests)."""
        from sglang.srt.mem_cache.allocator import (
            PagedTokenToKVPoolAllocator,
            TokenToKVPoolAllocator,
        )

        if capacity_tokens <= 0 or capacity_tokens % page_size:
            raise ValueError("capacity must be a positive multiple of the page size")
        if page_size == 1:
            alloc = TokenToKVPoolAllocator(capacity_tokens, torch.int64, "cpu", None, False)
        else:
            alloc = PagedTokenToKVPoolAllocator(
                capacity_tokens, page_size, torch.int64, "cpu", None, False
            )
        return cls(alloc, page_size, mover, host_capacity_tokens)

    # ---- memory pressure ----------------------------------------------------
    def held_tokens(self, rid: str) -> int:
        """Device slots that preempting this stream would free."""
        s = self._get(rid)
        if not s.pinned:
            return 0
        chain = self.tree.exclusive_chain(s.node, own_locks=1)
        return sum(len(n.value) for n in chain) + len(s.private)

    def held_by_rank(self, rids: Sequence[str]) -> list[int]:
        """Device slots per stream, each tree node counted once, for the first
        stream of ``rids`` (ranked highest first) whose path holds it.

        Why: streams that share a prefix each free nothing of it alone
        (``held_tokens`` is 0 for a node another stream locks), yet preempting all of
        them frees it. Summed over the streams ranked below one, this is what
        preempting all of those would free (or make evictable); per-stream
        ``held_tokens`` missed shared parts, and the scheduler then waited forever
        for memory that lower-ranked streams held together.
        """
        seen: set[int] = set()
        out: list[int] = []
        root = self.tree.root_node
        for rid in rids:
            s = self._get(rid)
            n = len(s.private)
            node = s.node if s.pinned else root
            while node is not root and id(node) not in seen:
                seen.add(id(node))
                n += len(node.value)
                node = node.parent
            out.append(n)
        return out

    def path_node_ids(self, rids: Sequence[str]) -> set[int]:
        """Ids of the tree nodes the pinned paths of ``rids`` hold."""
        seen: set[int] = set()
        root = self.tree.root_node
        for rid in rids:
            s = self._get(rid)
            node = s.node if s.pinned else root
            while node is not root and id(node) not in seen:
                seen.add(id(node))
                node = node.parent
        return seen

    def holds_beyond(self, rid: str, others: set[int]) -> bool:
        """Whether the stream holds device KV outside the nodes ``others`` (from
        ``path_node_ids``): preempting it then frees memory, now or once the other
        holders of its shared part are preempted too."""
        s = self._get(rid)
        if not s.pinned:
            return False
        return len(s.private) > 0 or (
            s.node is not self.tree.root_node and id(s.node) not in others
        )

    def pin(self, rid: str) -> int:
        """Hold the stream's path again after ``unpin``: re-match what is still
        cached (LRU may have taken the tail); returns the new computed length."""
        s = self._get(rid)
        if s.pinned:
            return s.computed
        if s.swapped is not None:  # its host copy continues the prefix: match exactly that
            self._pin_swapped(s)
            return s.computed
        tokens = s.tokens
        s.node, s.tree_len, s.tokens, s.pinned = self.tree.root_node, 0, array("q"), True
        self.reuse_prefix(rid, tokens)
        return s.computed

    def unpin(self, rid: str) -> None:
        """Let LRU eviction take this stream's KV if memory is needed (a soft
        preemption: nothing is freed now)."""
        s = self._get(rid)
        if s.reserved:
            raise StreamKVError(f"stream {rid!r}: unpin during a step")
        if s.pinned:
            self._free(s.private)
            del s.tokens[s.tree_len :]
            s.private = self._empty
            self.tree.dec_lock_ref(s.node)
            s.node, s.pinned = self.tree.root_node, False  # its nodes may be evicted

    def preempt(self, rid: str, mode: PreemptMode) -> PreemptResult:
        """Free the stream's exclusive KV now. ``swap`` copies it to the host
        pool first (restored by ``resume``); ``recompute`` drops it. The stream
        keeps its shared prefix, unlocked (see ``_release``); ``resume`` makes it
        resident again before its next ``reserve``."""
        s = self._get(rid)
        if s.reserved or not s.pinned or s.swapped is not None:
            raise StreamKVError(f"stream {rid!r} cannot be preempted now")
        chain = self.tree.exclusive_chain(s.node, own_locks=1)
        start = self.tree.depth(chain[-1].parent) if chain else s.tree_len
        n = s.computed - start
        if mode == "swap" and self.host_capacity is not None:
            if self.host_used + n > self.host_capacity:
                mode = "recompute"  # host pool full: fall back
        freed = len(s.private) + sum(len(node.value) for node in chain)
        if mode == "swap" and n > 0:
            host = None
            if self.mover is not None:
                host = self.mover.to_host(self.slots(rid)[start:])
            s.swapped = SwappedKV(start, host)
            self.host_used += n
        keep_tokens = s.tokens if s.swapped else None
        self._free(s.private)
        s.private = self._empty
        if chain:
            target = chain[-1].parent
            self._move_lock(s, target)
            self.tree.free_chain(chain)
        s.tree_len = start
        if keep_tokens is None:
            del s.tokens[start:]
        else:
            s.tokens = keep_tokens  # remembered for swap-in; computed restored then
        self._release(s)
        return PreemptResult(mode, freed, n if s.swapped else 0)


    def computed_resident(self, rid: str) -> int:
        """Computed tokens whose KV is on the device (excludes swapped-out KV)."""
        s = self._get(rid)
        return s.swapped.start if s.swapped else s.computed

    def resume(self, rid: str) -> bool:
        """Make the stream resident: swap its KV back in (False if the pool has
        no room now), or re-pin it after ``unpin``."""
        s = self._get(rid)
        if s.swapped is None:
            self.pin(rid)
            return True
        sw = s.swapped
        if not s.pinned and not self._pin_swapped(s):
            return True  # the prefix was evicted: the host copy was dropped (recompute)
        tokens = s.tokens[sw.start :]
        need = self._ceil(len(tokens))
        got = self._alloc(need)
        if got is None:
            self._release(s)  # waiting again: pin nothing meanwhile
            return False
        if self.mover is not None and sw.host_kv is not None:
            self.mover.to_device(sw.host_kv, got[: len(tokens)])
        self._drop_swap(s)
        del s.tokens[sw.start :]
        s.private, s.reserved = got, len(tokens)
        self.commit(rid, tokens)
        return True

    def _pin_swapped(self, s: StreamRecord) -> bool:
        """Lock the device prefix a swapped-out stream's host copy continues; False
        (host copy dropped, the stream keeps what is still cached) when LRU evicted
        part of it, since the copy cannot be placed after a gap."""
        sw = s.swapped
        assert sw is not None
        node, matched = self.tree.match_from(self.tree.root_node, s.tokens[: sw.start], s.extra_key)
        s.node, s.pinned = self.tree.root_node, True
        self._move_lock(s, node)
        s.tree_len = matched
        if matched == sw.start:
            return True
        self._drop_swap(s)
        del s.tokens[matched:]
        return False


    def check(self) -> None:
        """Assert the slot accounting and every stream's path (see ``kv_audit``)."""
        check_stream_kv(self)
