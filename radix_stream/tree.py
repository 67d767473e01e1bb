"""SGLang's RadixCache with the node-level operations that streamed input needs.

The tree is SGLang's own class (subclassed, not copied), so SGLang's scheduler can
use it through ``--radix-cache-backend stream2llm`` and our engines use the very
same code. What streaming adds, at the level of tree nodes:

* ``extend_from``: grow a stream's path from its current last node, instead of
  re-matching the whole input from the root on every chunk.
* ``node_at_depth`` / ``cut_path``: find (splitting if needed) the node that ends
  exactly at a given depth of a path, and cut the path there: where an update's
  longest common prefix (LCP) falls. Both trees' cuts (``StreamKVCache`` and the
  SGLang engine's ``kv.cut_to``) are this one function.
* ``exclusive_chain`` / ``free_chain``: the nodes at the bottom of a path that
  nobody else needs (no lock, no other branch below them), and freeing them at
  once, rather than waiting for LRU eviction to find them.

Locks are SGLang's ``lock_ref`` counts: a stream pins its path by holding one
lock on its last node (``inc_lock_ref`` walks to the root), which is exactly what
keeps LRU eviction away from it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

__all__ = ["StreamingRadixCache", "RadixKey", "TreeNode", "CacheInitParams", "EvictParams"]


class StreamingRadixCache(RadixCache):  # type: ignore[misc]  # SGLang has no stubs
    """RadixCache plus leaf extension, LCP cuts and exclusive-subtree freeing."""

    def key(self, token_ids: array[int], extra_key: str | None = None) -> RadixKey:
        return RadixKey(token_ids, extra_key)

    # ---- paths ----------------------------------------------------------
    def depth(self, node: TreeNode) -> int:
        """Number of tokens on the path from the root to the end of ``node``."""
        n = 0
        while node is not self.root_node:
            n += len(node.key)
            node = node.parent
        return n

    def path_nodes(self, node: TreeNode) -> list[TreeNode]:
        """Nodes from the root's child down to ``node``."""
        out = []
        while node is not self.root_node:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def node_at_depth(self, node: TreeNode, depth: int) -> TreeNode:
        """The node on ``node``'s path that ends exactly ``depth`` tokens from the
        root, splitting the node that straddles ``depth`` (page aligned)."""
        assert depth % self.page_size == 0, "cut depth must be page aligned"
        end = self.depth(node)
        assert 0 <= depth <= end
        while node is not self.root_node:
            start = end - len(node.key)
            if depth == end:
                return node
            if depth > start:
                # _split_node returns the new upper part, ending at `depth`.
                return self._split_node(node.key, node, depth - start)
            end = start
            node = node.parent
        return node

    def cut_path(
        self, node: TreeNode, depth: int, keep_head: int = 0
    ) -> tuple[TreeNode, torch.Tensor | None]:
        """Cut the path that ends at ``node`` (locked once by the caller) back to
        ``depth`` tokens (page aligned): where an update's LCP falls.

        The caller's lock moves to the node ending at ``depth``, which is returned;
        the part below it that only the caller needed is freed now, not left to
        LRU. With ``keep_head`` > 0 and all of that part freed, the first
        ``keep_head`` slots just below the cut are kept and returned (a partially
        valid page the caller keeps as its own); else None.
        """
        target = self.node_at_depth(node, depth)
        chain = self.exclusive_chain(node, own_locks=1)
        if target in chain:  # everything below the cut is the caller's alone
            chain, whole = chain[: chain.index(target)], True
        else:
            whole = bool(chain) and chain[-1].parent is target
        if target is not node:
            self.inc_lock_ref(target)
            self.dec_lock_ref(node)
        return target, self.free_chain(chain, keep_head=keep_head if whole else 0)

    # ---- growth ---------------------------------------------------------
    def extend_from(
        self, node: TreeNode, token_ids: array[int], slots: torch.Tensor, extra_key: str | None
    ) -> tuple[TreeNode, int]:
        """Insert ``token_ids`` (page aligned) below ``node``.

        Returns the new last node and how many leading tokens were already in the
        tree below ``node`` (their ``slots`` are duplicates the caller must free:
        the tree keeps its own copy, as in SGLang's insert path).
        """
        assert len(token_ids) % self.page_size == 0
        if len(token_ids) == 0:
            return node, 0
        key = RadixKey(token_ids, extra_key)
        dup, last = self._insert_helper(node, key, slots)
        return last, dup

    def match_from(
        self, node: TreeNode, token_ids: array[int], extra_key: str | None
    ) -> tuple[TreeNode, int]:
        """Longest cached continuation of ``node``'s path by ``token_ids``."""
        key = RadixKey(token_ids, extra_key).page_aligned(self.page_size)
        if len(key) == 0:
            return node, 0
        values, last = self._match_prefix_helper(node, key)
        return last, sum(len(v) for v in values)

    # ---- exclusive parts and freeing ------------------------------------
    def exclusive_chain(self, node: TreeNode, own_locks: int) -> list[TreeNode]:
        """Bottom-up nodes of ``node``'s path that only the caller needs.

        ``own_locks`` is how many locks the caller holds on ``node`` (1 for a
        pinned stream, 0 after it unlocked). A node qualifies while nobody else
        locks it and no other branch hangs below it.
        """
        chain: list[TreeNode] = []
        below: TreeNode | None = None
        while node is not self.root_node:
            others = [c for c in node.children.values() if c is not below]
            if node.lock_ref > own_locks or others:
                break
            chain.append(node)
            below, node = node, node.parent
        return chain

    def free_chain(self, chain: list[TreeNode], keep_head: int = 0) -> torch.Tensor | None:
        """Delete an unlocked bottom-up ``chain`` and free its slots at once.

        With ``keep_head`` > 0 the first ``keep_head`` slots of the topmost node
        are not freed but returned (an update keeps a partially valid page).
        """
        kept = None
        for i, node in enumerate(chain):
            assert node.lock_ref == 0 and not node.children, "only free unlocked leaves"
            value = node.value
            if keep_head and i == len(chain) - 1:
                kept, value = value[:keep_head].clone(), value[keep_head:]
            if len(value):
                self.token_to_kv_pool_allocator.free_segment(value, start_pos=0)
            self._delete_leaf(node)
            self.kv_events.record_remove(node)
        return kept

    def evict_tokens(self, num_tokens: int) -> int:
        n: int = self.evict(EvictParams(num_tokens=num_tokens)).num_tokens_evicted
        return n

    # ---- inspection -----------------------------------------------------
    def iter_nodes(self) -> Iterator[TreeNode]:
        stack = list(self.root_node.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check_tree(self) -> list[torch.Tensor]:
        """Assert the tree's own invariants; return every slot tensor it holds."""
        values, evictable, protected = [], 0, 0
        for node in self.iter_nodes():
            assert node.value is not None and len(node.value) == len(node.key)
            assert len(node.key) % self.page_size == 0
            assert node.lock_ref >= sum(c.lock_ref for c in node.children.values())
            if node.lock_ref > 0:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            values.append(node.value)
        assert evictable == self.evictable_size_, (evictable, self.evictable_size_)
        assert protected == self.protected_size_, (protected, self.protected_size_)
        return values


def build_tree(allocator: object, page_size: int) -> StreamingRadixCache:
    """A streaming tree over an SGLang token-to-KV allocator."""
    return StreamingRadixCache(
        CacheInitParams(
            disable=False,
            req_to_token_pool=None,
            token_to_kv_pool_allocator=allocator,
            page_size=page_size,
        )
    )
