"""Per-stream KV bookkeeping, part 1 of 3: records, locks, slots and accounting.

A stream's computed prefix lives in two places:

    root ── ... ── node            tree part: page-aligned, shared with anyone whose
                     │             input starts the same way (template, documents)
                     └─ private    at most one partial page (page_size > 1) plus the
                                   slots reserved for the step being computed

The stream pins its path by holding one SGLang lock on ``node``. Engines and the
simulator talk to ``StreamKVCache`` in tokens (reserve, commit, truncate, preempt);
only it touches the tree and the allocator, so the slot accounting
``free + tree + private == capacity`` can be checked at any time (``check``).

The class is built in three layers, one job each: ``KVPool`` here (stream records,
allocating and freeing slots, moving a stream's lock, open/close, accounting),
``KVCompute`` in kv_compute.py (reuse, reserve, commit, the update cut) and
``StreamKVCache`` in stream_kv.py (memory pressure: preempt, swap, resume, pin).
"""

from __future__ import annotations

from array import array
from typing import Any

import torch

from radix_stream.kv_records import (
    KVCapacityError,
    KVMover,
    KVStats,
    StreamKVError,
    StreamRecord,
)
from radix_stream.tree import TreeNode, build_tree


class KVPool:
    """Stream records over the tree and an SGLang allocator; see the module docstring."""

    def __init__(
        self,
        allocator: Any,  # SGLang's (Paged)TokenToKVPoolAllocator: no type stubs
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
        got: torch.Tensor | None = self.allocator.alloc(n)
        return got

    def _move_lock(self, s: StreamRecord, node: TreeNode) -> None:
        if s.pinned and node is not s.node:
            self.tree.inc_lock_ref(node)
            self.tree.dec_lock_ref(s.node)
        s.node = node


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


    def _drop_swap(self, s: StreamRecord) -> None:
        if s.swapped is not None:
            self.host_used -= len(s.tokens) - s.swapped.start
            del s.tokens[s.swapped.start :]
            s.swapped = None


    # ---- accounting -----------------------------------------------------------
    def available(self) -> int:
        n: int = self.allocator.available_size() + self.tree.evictable_size()
        return n

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

