"""Per-stream KV bookkeeping over the streaming radix tree and SGLang's allocator.

A stream's computed prefix lives in two places:

    root ── ... ── node            tree part: page-aligned, shared with anyone whose
                     │             input starts the same way (template, documents)
                     └─ private    at most one partial page (page_size > 1) plus the
                                   slots reserved for the step being computed

The stream pins its path by holding one SGLang lock on ``node``. Engines and the
simulator talk to this class in tokens (reserve, commit, truncate, preempt); only
this class touches the tree and the allocator, so the slot accounting
``free + tree + private == capacity`` can be checked at any time (``check``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import torch

from radix_stream.kv_audit import check_stream_kv
from radix_stream.kv_records import (
    KVCapacityError,
    KVMover,
    KVStats,
    PreemptMode,
    PreemptResult,
    StreamKVError,
    StreamRecord,
    SwappedKV,
    TruncateResult,
    common_prefix_len,
)
from radix_stream.tree import TreeNode, build_tree


class StreamKVCache:
    """KV slots of streaming requests: reserve, commit, truncate, preempt."""

    def __init__(
        self,
        allocator: Any,
        page_size: int = 1,
        mover: KVMover | None = None,
        host_capacity_tokens: int | None = None,
    ) -> None:
        self.allocator = allocator
        self.page_size = page_size
        self.tree = build_tree(allocator, page_size)
        self.mover = mover
        self.host_capacity = host_capacity_tokens
        self.host_used = 0
        self.capacity = (allocator.size // page_size) * page_size
        self._streams: dict[str, StreamRecord] = {}
        self._empty = torch.empty((0,), dtype=torch.int64)

    @classmethod
    def create(cls, capacity_tokens: int, page_size: int = 1, **kw: Any) -> StreamKVCache:
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
        return cls(alloc, page_size=page_size, **kw)

    # ---- helpers --------------------------------------------------------
    def _get(self, rid: str) -> StreamRecord:
        try:
            return self._streams[rid]
        except KeyError:
            raise StreamKVError(f"unknown stream {rid!r}") from None

    def _ceil(self, n: int) -> int:
        return -(-n // self.page_size) * self.page_size

    def _floor(self, n: int) -> int:
        return n // self.page_size * self.page_size

    def _free(self, slots: torch.Tensor) -> None:
        if len(slots):
            self.allocator.free_segment(slots, start_pos=0)

    def _alloc(self, n: int) -> torch.Tensor | None:
        if n == 0:
            return self._empty
        if n > self.capacity:
            raise KVCapacityError(f"{n} tokens exceed the KV pool ({self.capacity})")
        short = n - self.allocator.available_size()
        if short > 0:
            self.tree.evict_tokens(short)
        return self.allocator.alloc(n)

    def _move_lock(self, s: StreamRecord, node: TreeNode) -> None:
        if s.pinned and node is not s.node:
            self.tree.inc_lock_ref(node)
            self.tree.dec_lock_ref(s.node)
        s.node = node

    def _cut_tree(self, s: StreamRecord, keep: int) -> int:
        """Cut the stream's tree path back to ``keep`` tokens (``keep`` < tree_len)
        and free the exclusive part below at once; returns the new computed
        length (``keep``, or its page floor when the partial page is shared)."""
        aligned = self._floor(keep)
        target = self.tree.node_at_depth(s.node, aligned)
        chain = self.tree.exclusive_chain(s.node, own_locks=1)
        if target in chain:  # everything below the cut is ours alone
            chain, whole = chain[: chain.index(target)], True
        else:
            whole = bool(chain) and chain[-1].parent is target
        self._move_lock(s, target)
        partial = keep - aligned
        head = self.tree.free_chain(chain, keep_head=self.page_size if partial and whole else 0)
        s.tree_len = aligned
        if head is not None:  # the partially valid page stays, as our private page
            s.private = head
            return keep
        return aligned

    # ---- lifecycle ------------------------------------------------------
    def open(self, rid: str, extra_key: str | None = None) -> None:
        if rid in self._streams:
            raise StreamKVError(f"stream {rid!r} is already open")
        root = self.tree.root_node
        self._streams[rid] = StreamRecord(rid, extra_key, root, array("q"), 0, self._empty)

    def close(self, rid: str, keep_cache: bool = True) -> int:
        """End a stream. Finished: its tree path stays cached (evictable) for
        prefix reuse. Aborted (``keep_cache=False``): its exclusive KV is freed."""
        s = self._get(rid)
        if s.reserved:
            raise StreamKVError(f"stream {rid!r} has an uncommitted reservation")
        freed = len(s.private)
        self._free(s.private)
        if s.pinned:
            self.tree.dec_lock_ref(s.node)
        if not keep_cache and s.pinned:
            chain = self.tree.exclusive_chain(s.node, own_locks=0)
            freed += sum(len(n.value) for n in chain)
            self.tree.free_chain(chain)
        self._drop_swap(s)
        del self._streams[rid]
        return freed

    def computed(self, rid: str) -> int:
        return self._get(rid).computed

    def token_ids(self, rid: str) -> list[int]:
        return list(self._get(rid).tokens)

    def is_resident(self, rid: str) -> bool:
        s = self._get(rid)
        return s.pinned and s.swapped is None

    def is_swapped(self, rid: str) -> bool:
        return self._get(rid).swapped is not None

    def streams(self) -> list[str]:
        return list(self._streams)

    # ---- input changes --------------------------------------------------
    def reuse_prefix(self, rid: str, input_ids: Sequence[int]) -> int:
        """Adopt KV already in the tree for ``input_ids[computed:]`` (a shared
        template, documents another stream computed, a finished request)."""
        s = self._get(rid)
        if not s.pinned or s.reserved or s.computed != s.tree_len or s.swapped:
            return s.computed
        rest = array("q", input_ids[s.tree_len :])
        node, matched = self.tree.match_from(s.node, rest, s.extra_key)
        if matched:
            self._move_lock(s, node)
            s.tokens.extend(rest[:matched])
            s.tree_len += matched
        return s.computed

    def truncate(self, rid: str, new_input_ids: Sequence[int]) -> TruncateResult:
        """Update mode: keep KV up to the LCP of the computed tokens and the new
        input; free what this stream alone held past it, now."""
        s = self._get(rid)
        if s.reserved:
            raise StreamKVError(f"stream {rid!r}: truncate during a step")
        old = s.computed
        lcp = common_prefix_len(s.tokens, new_input_ids)
        if lcp >= old:
            return TruncateResult(old, 0)
        if s.swapped is not None:  # the host copy is dropped; only device KV is cut
            start = s.swapped.start
            self._drop_swap(s)
            lcp = min(lcp, start)
            if lcp == start:
                return TruncateResult(lcp, old - lcp)
        if not s.pinned:  # its nodes are plain cache now; pin() re-matches later
            del s.tokens[lcp:]
            s.tree_len = min(s.tree_len, lcp)
            return TruncateResult(lcp, old - lcp)
        if lcp >= s.tree_len:  # the cut falls in the private partial page
            keep_slots = self._ceil(lcp - s.tree_len)
            self._free(s.private[keep_slots:])
            s.private = s.private[:keep_slots]
            new_len = lcp
        else:
            self._free(s.private)
            s.private = self._empty
            new_len = self._cut_tree(s, lcp)
        del s.tokens[new_len:]
        return TruncateResult(new_len, old - new_len)

    # ---- computing --------------------------------------------------------
    def reserve(self, rid: str, n: int) -> torch.Tensor | None:
        """Slots for positions [computed, computed + n), evicting unpinned cache
        if needed; None when the pool cannot provide them (preempt someone)."""
        s = self._get(rid)
        if not s.pinned or s.swapped is not None:
            raise StreamKVError(f"stream {rid!r} is not resident")
        if s.reserved:
            raise StreamKVError(f"stream {rid!r} already has a reservation")
        offset = s.computed - s.tree_len
        extra = self._ceil(offset + n) - len(s.private)
        if extra > 0:
            got = self._alloc(extra)
            if got is None:
                return None
            s.private = torch.cat((s.private, got)) if len(s.private) else got
        s.reserved = n
        return s.private[offset : offset + n]

    def reserve_many(self, requests: Sequence[tuple[str, int]]) -> list[torch.Tensor] | None:
        """``reserve`` for several streams with *one* allocator call, all or nothing.

        Why: SGLang's paged ``alloc`` costs ~20 us of small torch ops per call
        whatever the size, so a step with ten items paid ~10 calls; here the pages
        are taken once and sliced per stream (page aligned, since every stream's
        private run is whole pages). Returns the slots in request order, or None
        with nothing reserved when the pool cannot provide them all.
        """
        todo: list[tuple[StreamRecord, int, int, int]] = []
        seen: set[str] = set()
        total = 0
        for rid, n in requests:
            s = self._get(rid)
            if not s.pinned or s.swapped is not None:
                raise StreamKVError(f"stream {rid!r} is not resident")
            if s.reserved or rid in seen:
                raise StreamKVError(f"stream {rid!r} already has a reservation")
            seen.add(rid)
            offset = s.computed - s.tree_len
            extra = max(0, self._ceil(offset + n) - len(s.private))
            todo.append((s, n, offset, extra))
            total += extra
        if total > self.available():
            return None
        got = self._alloc(total)
        if got is None:
            return None
        out: list[torch.Tensor] = []
        pos = 0
        for s, n, offset, extra in todo:
            if extra:
                piece = got[pos : pos + extra]
                pos += extra
                s.private = torch.cat((s.private, piece)) if len(s.private) else piece
            s.reserved = n
            out.append(s.private[offset : offset + n])
        return out

    def cancel(self, rid: str) -> None:
        """Give back a reservation that will not be computed."""
        s = self._get(rid)
        keep = self._ceil(s.computed - s.tree_len)
        self._free(s.private[keep:])
        s.private, s.reserved = s.private[:keep], 0

    def commit(self, rid: str, token_ids: Sequence[int]) -> None:
        """The reserved positions now hold the KV of ``token_ids``; full pages
        join the tree (extending the stream's leaf)."""
        s = self._get(rid)
        if len(token_ids) != s.reserved:
            raise StreamKVError(f"stream {rid!r}: commit {len(token_ids)} != reserved {s.reserved}")
        s.tokens.extend(token_ids)
        s.reserved = 0
        full = self._floor(s.computed) - s.tree_len
        if full <= 0:
            return
        ids = s.tokens[s.tree_len : s.tree_len + full]
        slots = s.private[:full]
        node, dup = self.tree.extend_from(s.node, ids, slots, s.extra_key)
        self._free(slots[:dup])  # another stream computed these first: keep theirs
        self._move_lock(s, node)
        s.tree_len += full
        s.private = s.private[full:]

    def slots(self, rid: str) -> torch.Tensor:
        """Slots of positions [0, computed), in order."""
        s = self._get(rid)
        path = self.tree.path_device_indices(s.node)
        tail = s.private[: s.computed - s.tree_len]
        return torch.cat((path, tail)) if len(tail) else path

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

    def _release(self, s: StreamRecord) -> None:
        """Drop a preempted stream's lock on the prefix it still shares.

        Why: a preempted stream is never a victim again until it runs, so a lock
        it kept would pin that prefix for as long as it waits. When the streams it
        shared the prefix with are preempted or finish, nobody can free it, and
        ``held_tokens`` of each holder does not count it (the other's lock covers
        it): a higher-ranked stream then waits forever for memory that exists (the
        swap hang of tests/test_real_model_exact.py). Unlocked, the prefix stays
        cached while others use it and is evictable otherwise; ``resume`` re-matches
        it (and falls back to recompute when LRU took part of it).
        """
        if s.pinned:
            self.tree.dec_lock_ref(s.node)
            s.node, s.pinned = self.tree.root_node, False

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

    def _drop_swap(self, s: StreamRecord) -> None:
        if s.swapped is not None:
            self.host_used -= len(s.tokens) - s.swapped.start
            del s.tokens[s.swapped.start :]
            s.swapped = None

    # ---- accounting -----------------------------------------------------------
    def available(self) -> int:
        return self.allocator.available_size() + self.tree.evictable_size()

    def stats(self) -> KVStats:
        free = self.allocator.available_size()
        private = sum(len(s.private) for s in self._streams.values())
        return KVStats(
            capacity=self.capacity,
            used=self.capacity - free,
            pinned=self.tree.protected_size(),
            evictable=self.tree.evictable_size(),
            free=free,
            private=private,
            host=self.host_used,
        )

    def check(self) -> None:
        """Assert the slot accounting and every stream's path (see ``kv_audit``)."""
        check_stream_kv(self)
