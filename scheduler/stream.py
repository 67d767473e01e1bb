"""Per-request state of a streamed request.

A *stream* is one request whose input arrives in chunks. The scheduler keeps one
``Stream`` per live request id; the KV manager (``radix_stream.StreamKVCache``)
owns which tokens are cached, and this module owns what the request *is*: the
input received so far, whether it is final, the outputs, and the timestamps the
metrics need. Keeping the two apart lets the same state drive the simulator and
the real engine.

Token positions: the sequence a stream computes is ``input_ids + outputs``. The
last sampled output is never computed until the next decode step, so a decode
stream always has exactly one pending token, and a prefill stream has
``len(input_ids) - computed`` pending tokens. One formula serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Mode = Literal["append", "update"]
PreemptKind = Literal["recompute", "swap"]


class StreamState(StrEnum):
    """Where a stream is in its life (derived, never stored inconsistently)."""

    WAITING_INPUT = "waiting_input"  # all received input computed, more chunks to come
    RUNNABLE = "runnable"  # has input tokens not yet prefilled
    DECODING = "decoding"  # input final and prefilled, producing outputs
    PREEMPTED_RECOMPUTE = "preempted_recompute"
    PREEMPTED_SWAP = "preempted_swap"
    FINISHED = "finished"
    ABORTED = "aborted"


class StreamError(ValueError):
    """A chunk or call that does not fit the stream's state."""


class UnknownStream(StreamError, KeyError):
    """No live stream has this request id."""


class DuplicateStream(StreamError):
    """``open`` for a request id that is still live."""


class ChunkAfterFinal(StreamError):
    """A chunk for a stream whose final chunk was already received."""


class OutOfOrderChunk(StreamError):
    """A chunk whose index or timestamp goes backwards."""


class InputTooLong(StreamError):
    """The input (plus outputs) can never fit the KV pool: the caller must abort."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How many tokens to produce and when to stop early."""

    max_new_tokens: int = 1
    eos_token_id: int | tuple[int, ...] | None = None

    def is_eos(self, token: int) -> bool:
        eos = self.eos_token_id
        if eos is None:
            return False
        if isinstance(eos, int):
            return token == eos
        return token in eos


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one chunk did to the cached state.

    ``kept``: computed tokens still valid after the chunk; ``invalidated``: computed
    tokens the chunk made stale (update mode, past the longest common prefix).
    ``deferred``: the stream was inside a running step, so the cut is applied when
    that step is committed (the numbers already account for the step).
    """

    kept: int
    invalidated: int
    deferred: bool = False


@dataclass(eq=False, slots=True)
class Stream:
    """One live request. Mutated only by the scheduler."""

    rid: str
    mode: Mode
    seq: int  # order in which the engine saw the request (``default`` policy, ties)
    opened_s: float
    sampling: SamplingParams = field(default_factory=SamplingParams)
    input_ids: list[int] = field(default_factory=list)
    final: bool = False
    chunks: int = 0
    first_chunk_s: float | None = None
    last_chunk_s: float | None = None
    final_s: float | None = None
    outputs: list[int] = field(default_factory=list)
    first_token_s: float | None = None
    done_s: float | None = None
    computed: int = 0  # mirror of kv.computed(rid), refreshed after every KV mutation
    preempted: PreemptKind | None = None
    swapped_tokens: int = 0  # KV tokens on the host, to bring back before running
    terminal: StreamState | None = None  # FINISHED / ABORTED
    in_flight: bool = False  # part of a plan whose step has not been committed
    abort_pending: bool = False
    pending_input: list[int] | None = None  # update that arrived mid-step
    tokens_invalidated: int = 0
    preemptions: int = 0
    last_sched_s: float = 0.0  # when it last ran (aging, LRU-style victims)

    @property
    def seq_len(self) -> int:
        """Length of ``input_ids + outputs``: what must be computed to sample next."""
        return len(self.input_ids) + len(self.outputs)

    @property
    def pending(self) -> int:
        """Tokens to compute before the stream can make progress."""
        return self.seq_len - self.computed

    def tokens(self, start: int, n: int) -> list[int]:
        """Token ids at positions ``[start, start+n)`` of ``input_ids + outputs``."""
        k = len(self.input_ids)
        end = start + n
        if end <= k:
            return self.input_ids[start:end]
        if start >= k:
            return self.outputs[start - k : end - k]
        return self.input_ids[start:] + self.outputs[: end - k]

    @property
    def state(self) -> StreamState:
        if self.terminal is not None:
            return self.terminal
        if self.preempted == "recompute":
            return StreamState.PREEMPTED_RECOMPUTE
        if self.preempted == "swap":
            return StreamState.PREEMPTED_SWAP
        if self.pending > 0:
            return StreamState.DECODING if self.outputs else StreamState.RUNNABLE
        return StreamState.WAITING_INPUT

    def check_chunk(self, now: float, index: int | None) -> None:
        """Raise a typed error if a chunk cannot be accepted now."""
        if self.terminal is not None or self.abort_pending:
            raise StreamError(f"{self.rid}: stream is {self.state.value}")
        if self.final:
            raise ChunkAfterFinal(f"{self.rid}: chunk after the final chunk")
        if index is not None and index != self.chunks:
            raise OutOfOrderChunk(f"{self.rid}: chunk {index} arrived, expected {self.chunks}")
        if self.last_chunk_s is not None and now < self.last_chunk_s:
            raise OutOfOrderChunk(f"{self.rid}: chunk time {now} before {self.last_chunk_s}")

    def note_chunk(self, now: float, final: bool) -> None:
        if self.first_chunk_s is None:
            self.first_chunk_s = now
        self.last_chunk_s = now
        self.chunks += 1
        if final:
            self.final = True
            self.final_s = now


def common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (at most ``limit``)."""
    n = min(len(a), len(b))
    if limit is not None:
        n = min(n, limit)
    if a[:n] == b[:n]:  # fast path: C-level compare
        return n
    lo, hi = 0, n  # binary search on equal prefixes, each compare in C
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
