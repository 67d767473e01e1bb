"""Phase 1 of a step: which streams run and how many tokens each (pure: no mutation).

One walk over the streams in policy order, with the token budget, the batch limit,
the policy's caps on partial input and, optionally, a memory budget:

* Without ``held`` (the common case) memory is not a limit during the walk; the
  walk reports whether free + evictable memory covers what it chose. When it
  does, the memory-aware walk would choose exactly the same.
* With ``held`` (one entry per stream of ``order``: the device KV it holds, shared
  prefixes counted once), the memory budget is everything free or evictable plus
  what the streams *ranked below* the current one hold (they are preemptible for
  it): each stream is given at most what is left of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from scheduler.policies import Policy
from scheduler.stream import Stream

Chosen = list[tuple[Stream, int]]


class Planner:
    """The plan walk under one policy; ``wake`` is the earliest end of a hold it saw."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        pol = type(policy)
        self.holds = pol.hold_until is not Policy.hold_until
        self.limited = self.holds or pol.partial_step_tokens is not None
        self.wake = float("inf")

    def cap(self, s: Stream, n: int, now: float, partial: int, holds: bool = True) -> int:
        """The policy's limits on a partial stream: held back (0, unless ``holds`` is
        off) or the per-step cap on partial prefill (``partial`` tokens of it already
        planned)."""
        if s.final:
            return n
        if holds and self.holds:
            t = self.policy.hold_until(s, now)
            if t is not None and t > now:
                self.wake = min(self.wake, t)
                return 0
        cap = self.policy.partial_step_tokens
        if cap is None or s.mode not in self.policy.partial_cap_modes:
            return n
        return min(n, cap - partial)

    def walk(
        self,
        order: Sequence[Stream],
        now: float,
        budget: int,
        max_items: int,
        page: int,
        memory: int,
        held: Sequence[int] | None = None,
    ) -> tuple[Chosen, bool]:
        """Choose ``(stream, tokens)`` in ``order``; returns them and whether they fit
        ``memory`` (free + evictable slots; ``held`` adds the preemptible ones and
        bounds each stream, see the module docstring).

        Holds are work-conserving: a hold defers a young version behind other work,
        but when it is all there is to run the walk takes it anyway (an idle engine
        costs the same; docs/performance.md). ``wake`` still says when it matures."""
        chosen, fits = self._walk(order, now, budget, max_items, page, memory, held, True)
        if chosen or self.wake == float("inf"):
            return chosen, fits
        wake = self.wake
        chosen, fits = self._walk(order, now, budget, max_items, page, memory, held, False)
        self.wake = wake
        return chosen, fits

    def _walk(self, order: Sequence[Stream], now: float, budget: int, max_items: int,
              page: int, memory: int, held: Sequence[int] | None,
              holds: bool) -> tuple[Chosen, bool]:  # fmt: skip
        bounded = held is not None
        if held is not None:
            memory += sum(held)
        limited = self.limited
        self.wake = float("inf")
        out: Chosen = []
        partial = 0
        for s, h in zip(order, held if held is not None else repeat(0), strict=False):
            memory -= h  # ranked at or above the next candidates: not preemptible for them
            if budget <= 0 or len(out) >= max_items:
                break
            p = s.pending
            if p <= 0:
                continue
            n = p if p < budget else budget
            if bounded:
                n = min(n, memory - s.swapped_tokens - page)
            if limited and not s.final and n > 0:
                n = self.cap(s, n, now, partial, holds)
                partial += max(n, 0)
            if n <= 0:
                continue
            out.append((s, n))
            budget -= n
            memory -= n + s.swapped_tokens + page
        return out, memory >= 0
