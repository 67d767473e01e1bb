"""The streaming radix tree: SGLang's RadixCache extended for streamed input.

``StreamingRadixCache`` is the tree (a subclass of SGLang's ``RadixCache``);
``StreamKVCache`` keeps each stream's KV slots on top of it and an SGLang
allocator, and is what schedulers and engines use.
"""

from radix_stream._sglang import ensure_sglang_importable

ensure_sglang_importable()

from radix_stream.kv_records import (  # noqa: E402
    KVCapacityError,
    KVMover,
    KVStats,
    PreemptMode,
    PreemptResult,
    StreamKVError,
    TruncateResult,
)
from radix_stream.stream_kv import StreamKVCache  # noqa: E402
from radix_stream.tree import StreamingRadixCache  # noqa: E402

__all__ = [
    "KVCapacityError",
    "KVMover",
    "KVStats",
    "PreemptMode",
    "PreemptResult",
    "StreamKVCache",
    "StreamKVError",
    "StreamingRadixCache",
    "TruncateResult",
]
