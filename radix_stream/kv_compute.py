"""Per-stream KV bookkeeping, part 2 of 3: computing and changing a stream's input.

``reuse_prefix`` adopts KV the tree already holds; ``reserve`` / ``reserve_many``
give slots for the next step and ``commit`` files full pages into the tree
(extending the stream's path); ``truncate`` is the update-mode cut at the longest
common prefix of what is computed and the new input. See kv_pool.py for the layout.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from radix_stream.kv_pool import KVPool
from radix_stream.kv_records import StreamKVError, StreamRecord, TruncateResult
from stream2llm.lcp import common_prefix_len


class KVCompute(KVPool):
    """Reuse, reserve, commit and the update cut over ``KVPool``'s records."""

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


    def _cut_tree(self, s: StreamRecord, keep: int) -> int:
        """Cut the stream's tree path back to ``keep`` tokens (``keep`` < tree_len)
        and free the exclusive part below at once; returns the new computed
        length (``keep``, or its page floor when the partial page is shared)."""
        aligned = self._floor(keep)
        partial = keep - aligned
        s.node, head = self.tree.cut_path(s.node, aligned, self.page_size if partial else 0)
        s.tree_len = aligned
        if head is not None:  # the partially valid page stays, as our private page
            s.private = head
            return keep
        return aligned

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
