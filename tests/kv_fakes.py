"""Test helpers: a KV "content" array standing in for KV tensors.

The KV of a token depends on the token and everything before it, so a slot's
content is written as a hash of the whole prefix up to that position. A stream's
slots hold the right KV exactly when their contents equal the prefix hashes of
its computed tokens, which is what the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radix_stream import StreamKVCache


def prefix_hashes(tokens: Sequence[int]) -> list[int]:
    out, h = [], 0
    for t in tokens:
        h = (h * 1_000_003 + int(t) + 1) % (1 << 61)
        out.append(h)
    return out


class ContentMover:
    """Swap mover over the content array (what an engine does with real KV)."""

    def __init__(self, content: torch.Tensor) -> None:
        self.content = content

    def to_host(self, slots: torch.Tensor) -> torch.Tensor:
        return self.content[slots].clone()

    def to_device(self, host_kv: torch.Tensor, slots: torch.Tensor) -> None:
        self.content[slots] = host_kv


class FakeKV:
    """A StreamKVCache whose "forward" writes prefix hashes into the slots."""

    def __init__(self, capacity: int, page_size: int = 1, host: int | None = None) -> None:
        self.content = torch.full((capacity + 2 * page_size,), -1, dtype=torch.int64)
        self.kv = StreamKVCache.create(
            capacity,
            page_size=page_size,
            mover=ContentMover(self.content),
            host_capacity_tokens=host,
        )

    def compute(self, rid: str, input_ids: Sequence[int], n: int) -> bool:
        """Prefill the next ``n`` input tokens; False if memory ran out."""
        start = self.kv.computed(rid)
        new = list(input_ids[start : start + n])
        slots = self.kv.reserve(rid, len(new))
        if slots is None:
            return False
        hashes = prefix_hashes(list(input_ids[: start + len(new)]))[start:]
        self.content[slots] = torch.tensor(hashes, dtype=torch.int64)
        self.kv.commit(rid, new)
        return True

    def assert_content(self, rid: str) -> None:
        tokens = self.kv.token_ids(rid)[: self.kv.computed_resident(rid)]
        slots = self.kv.slots(rid)[: len(tokens)]
        assert self.content[slots].tolist() == prefix_hashes(tokens), f"KV of {rid} corrupted"
