"""Scheduling policies: which live stream runs first, and which one is evicted.

A policy maps a stream to a sort key; an *ascending* key is a higher priority
(the artifact's convention). The scheduler plans in key order and, when memory
runs out, preempts planned-out streams starting from the *lowest* priority,
unless the policy overrides ``victim_key``.

Classes used by the streaming policies (the paper's "complete before partial"):
    0  input final (prefill to finish, or decoding): a user is waiting on it
    1  input partial, with unprocessed tokens
    2  input partial, nothing to do (parked until its next chunk)
"""

from __future__ import annotations

from typing import ClassVar

from scheduler.stream import Stream

Key = tuple[float, ...]


def work_class(s: Stream) -> int:
    if s.final:
        return 0
    return 1 if s.pending > 0 else 2


def _t(x: float | None) -> float:
    return x if x is not None else float("inf")


class Policy:
    """Base class: subclasses set ``name`` and implement ``key``."""

    name: ClassVar[str] = ""
    #: Cap on the tokens of *partial*-input prefill in one step (None: no cap). A step
    #: cannot be interrupted, so partial work in it delays any final chunk that lands
    #: meanwhile; a cap bounds that delay at the price of smaller steps.
    partial_step_tokens: ClassVar[int | None] = None
    #: Input modes whose partial streams the cap above applies to.
    partial_cap_modes: ClassVar[tuple[str, ...]] = ("append", "update")

    def key(self, s: Stream, now: float) -> Key:
        raise NotImplementedError

    def hold_until(self, s: Stream, now: float) -> float | None:
        """Time before which the partial stream ``s`` must not be prefilled, or None.

        Lets a policy leave young update-mode versions alone (they are often replaced
        before they become final, and then their prefill was wasted). The scheduler only
        calls it when a subclass overrides it, and never for a final input.
        """
        return None

    def victim_key(self, s: Stream, now: float) -> Key | None:
        """Sort key among eviction candidates (ascending = evicted first).

        ``None`` means "reverse priority order", the paper's rule.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DefaultPolicy(Policy):
    """Engine order (first seen first), LIFO victim: vanilla vLLM/SGLang.

    Not streaming-aware: a partial stream that arrived earlier outranks a complete
    one that arrived later, so a user with a finished input can wait behind
    streams that are only parked.
    """

    name = "default"

    def key(self, s: Stream, now: float) -> Key:
        return (s.seq,)


class FCFSPolicy(Policy):
    """Complete before partial; within a class, by arrival of the first chunk."""

    name = "fcfs"

    def key(self, s: Stream, now: float) -> Key:
        return (work_class(s), _t(s.first_chunk_s), s.seq)


class LCASPolicy(Policy):
    """Complete before partial, then by last chunk arrival, ascending.

    Ascending (the artifact's code, not its docstring): the stream idle the
    longest goes first. It can starve streams whose chunks keep arriving.
    """

    name = "lcas"

    def key(self, s: Stream, now: float) -> Key:
        return (work_class(s), _t(s.last_chunk_s), s.seq)


class LCASDescPolicy(Policy):
    """LCAS as the paper's docstring describes it: most recent chunk first."""

    name = "lcas-desc"

    def key(self, s: Stream, now: float) -> Key:
        return (work_class(s), -_t(s.last_chunk_s), s.seq)


class MCPSPolicy(Policy):
    """Most computed tokens first (complete before partial).

    In update mode an LCP cut resets ``computed``, so progress is forgotten.
    """

    name = "mcps"

    def key(self, s: Stream, now: float) -> Key:
        return (work_class(s), -s.computed, s.seq)
