"""SGLang's KV pool and allocator, and the host<->device mover for swap preemption.

The engine keeps KV in SGLang's own ``MHATokenToKVPool`` (page size 1, slot 0
reserved by SGLang as the dummy slot, usable slots 1..size) so the streaming
radix tree, the allocator and the KV layout are exactly SGLang's. Swapping uses
the allocator's own ``get_cpu_copy``/``load_cpu_copy`` (what SGLang's retract
path uses), so a swapped stream's KV comes back bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radix_stream._sglang import ensure_sglang_importable

import torch


def make_kv_pool(
    size: int,
    dtype: torch.dtype,
    kv_heads: int,
    head_dim: int,
    layers: int,
    device: torch.device | str,
) -> tuple[Any, Any]:
    """(MHATokenToKVPool, TokenToKVPoolAllocator) with ``size`` usable slots."""
    ensure_sglang_importable()
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    dev = str(device)
    pool = MHATokenToKVPool(
        size, 1, dtype, kv_heads, head_dim, layers, dev, enable_memory_saver=False
    )
    allocator = TokenToKVPoolAllocator(size, dtype, dev, kvcache=pool, need_sort=False)
    return pool, allocator


@dataclass
class HostKV:
    """KV of some slots copied to host memory (SGLang's nested per-layer lists)."""

    data: Any
    n_tokens: int


class KVMover:
    """What ``StreamKVCache(allocator, mover=...)`` calls to swap KV out and in."""

    def __init__(self, allocator: Any) -> None:
        self.allocator = allocator

    def to_host(self, slots: torch.Tensor) -> HostKV:
        return HostKV(self.allocator.get_cpu_copy(slots), int(slots.numel()))

    def to_device(self, host_kv: HostKV, slots: torch.Tensor) -> None:
        if int(slots.numel()) != host_kv.n_tokens:
            raise ValueError(f"swap-in of {host_kv.n_tokens} tokens into {slots.numel()} slots")
        self.allocator.load_cpu_copy(host_kv.data, slots)
