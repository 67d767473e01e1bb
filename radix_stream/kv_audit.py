"""The slot-accounting audit of StreamKVCache: what ``kv.check()`` asserts.

Kept apart from the manager so the invariants read as one list: free slots, tree
slots and stream-private slots partition the pool exactly (no slot twice, none
lost); SGLang's evictable/protected sizes match the tree; every pinned stream's
path is locked and spells its computed tokens.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radix_stream.stream_kv import StreamKVCache


def check_stream_kv(kv: StreamKVCache) -> None:
    """Assert: free + tree + private slots partition the pool exactly; every
    pinned stream's path is locked and matches its tokens."""
    held = kv.tree.check_tree() + [s.private for s in kv._streams.values()]
    used = torch.cat(held) if held else kv._empty
    alloc = kv.allocator
    if kv.page_size == 1:
        free = torch.cat((alloc.free_pages, alloc.release_pages))
    else:
        pages = alloc.get_all_free_pages()
        free = (pages[:, None] * kv.page_size + torch.arange(kv.page_size)).reshape(-1)
    everything = torch.cat((used, free))
    assert len(torch.unique(everything)) == len(everything), "a slot is held twice"
    assert len(everything) == kv.capacity, (len(everything), kv.capacity)
    for s in kv._streams.values():
        assert len(s.private) % kv.page_size == 0
        if s.pinned:
            assert s.tree_len == kv.tree.depth(s.node)
            assert s.node is kv.tree.root_node or s.node.lock_ref >= 1
            path = kv.tree.path_nodes(s.node)
            ids = array("q")
            for n in path:
                ids.extend(n.key.raw_token_ids())
            assert ids == s.tokens[: s.tree_len], f"stream {s.rid}: path != tokens"
            resident = s.swapped.start if s.swapped else s.computed
            assert len(s.private) >= resident - s.tree_len + s.reserved
