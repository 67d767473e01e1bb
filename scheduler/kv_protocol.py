"""The KV seam: what the scheduler asks of a KV manager, in tokens.

``Scheduler.kv`` is typed by ``KVManager`` (``Scheduler`` is generic in it), so
mypy checks every KV manager against this list structurally:
``radix_stream.StreamKVCache`` (the real one, on SGLang's tree and allocator; the
simulator uses it too, as a counting pool) and the test helpers built on it. The
scheduler calls nothing else; it never sees the tree, an allocator or a tensor
beyond passing the reserved slots through to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from radix_stream.kv_records import PreemptMode, PreemptResult, TruncateResult


@runtime_checkable
class KVManager(Protocol):
    """Per-stream KV: open/close, reuse, reserve -> commit, cut, preempt/resume."""

    page_size: int
    capacity: int  # device slots in all

    # ---- lifecycle and input changes
    def open(self, rid: str, extra_key: str | None = None) -> None: ...

    def close(self, rid: str, keep_cache: bool = True) -> int: ...

    def computed(self, rid: str) -> int: ...

    def reuse_prefix(self, rid: str, input_ids: Sequence[int]) -> int: ...

    def truncate(self, rid: str, new_input_ids: Sequence[int]) -> TruncateResult: ...

    # ---- a step: slots for the planned tokens, then the computed tokens
    def available(self) -> int: ...

    def reserve(self, rid: str, n: int) -> torch.Tensor | None: ...

    def reserve_many(self, requests: Sequence[tuple[str, int]]) -> list[torch.Tensor] | None: ...

    def commit(self, rid: str, token_ids: Sequence[int]) -> None: ...

    # ---- memory pressure: what preempting frees, preempt, make resident again
    def held_tokens(self, rid: str) -> int: ...

    def held_by_rank(self, rids: Sequence[str]) -> list[int]: ...

    def path_node_ids(self, rids: Sequence[str]) -> set[int]: ...

    def holds_beyond(self, rid: str, others: set[int]) -> bool: ...

    def preempt(self, rid: str, mode: PreemptMode) -> PreemptResult: ...

    def resume(self, rid: str) -> bool: ...

    # ---- the invariant audit (tests call it after every step)
    def check(self) -> None: ...
