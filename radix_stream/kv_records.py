"""Records, errors and small helpers of the per-stream KV manager (stream_kv.py)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import torch

from radix_stream.tree import TreeNode

PreemptMode = Literal["recompute", "swap"]


class KVCapacityError(RuntimeError):
    """A request for KV memory that can never be met (larger than the pool)."""


class StreamKVError(KeyError):
    """An operation on an unknown stream or in the wrong state."""


class TruncateResult(NamedTuple):
    kept: int  # computed tokens still valid after the update
    invalidated: int  # computed tokens whose KV was dropped


class PreemptResult(NamedTuple):
    mode: PreemptMode
    freed: int  # device slots returned to the allocator
    swapped: int  # tokens whose KV now sits in the host pool


class KVStats(NamedTuple):
    capacity: int
    used: int
    pinned: int
    evictable: int
    free: int
    private: int
    host: int


class KVMover(Protocol):
    """Copies KV between the device pool and host memory (swap preemption).

    The host copy is whatever the engine's mover makes (a tensor, a tuple of
    per-layer tensors); this package only hands it back, hence ``Any``."""

    def to_host(self, slots: torch.Tensor) -> Any: ...

    def to_device(self, host_kv: Any, slots: torch.Tensor) -> None: ...


@dataclass
class SwappedKV:
    start: int  # position of the first swapped token
    host_kv: Any


@dataclass
class StreamRecord:
    rid: str
    extra_key: str | None
    node: TreeNode
    tokens: array[int]  # computed token ids (array('q'), as RadixKey wants)
    tree_len: int  # tokens covered by the tree path (page aligned)
    private: torch.Tensor  # slots of positions tree_len.. (partial page + reservation)
    reserved: int = 0  # positions reserved by reserve() and not yet committed
    pinned: bool = True
    swapped: SwappedKV | None = None

    @property
    def computed(self) -> int:
        return len(self.tokens)

