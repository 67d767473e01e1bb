"""Our policy, ``ours``: tuned with the simulator (docs/performance.md, issue 3).

Three rules, each for a measured reason:

1. **Complete inputs first, shortest remaining work first, with aging.** A user waits
   on every complete input, and TTFT is counted from its final chunk. Among them the
   key is ``pending / TOKENS_PER_S - AGING * waited``: estimated seconds of prefill
   left, minus how long the input has been complete. Short finals overtake a huge one
   (on ANNS one 100K-token prompt holds the engine for seconds and is what sets the
   non-streaming P99), but every second of waiting buys ``AGING`` seconds of priority,
   so a large final overtakes any newcomer after ``size_s / AGING`` and cannot starve.
2. **Partial update-mode prefill only in small slices.** At most ``partial_step_tokens``
   tokens of partial-input prefill per step for update-mode streams: a step cannot be
   interrupted, and a final chunk landing during a full 8K-token partial step would
   wait for all of it (and the version may be replaced anyway). Append-mode chunks are
   never wasted and their steps are short (2K-token budget), so they are not capped:
   on the crawler at ~90% load the cap starved partial prefill and doubled P99
   (seed 0: 5.3x vs 7.4x uncapped; docs/performance.md).
3. **Young update-mode versions are held back** for ``HOLD_S`` after they arrive. A
   version that is replaced before it is final is wasted prefill (on ANNS the LCP of
   consecutive versions is ~21% of the input); versions that stay put are prefilled
   once they have been stable for ``HOLD_S``. Append-mode chunks are never wasted,
   so they are never held. The hold is work-conserving (scheduler/planning.py): it defers
   a young version only behind other work; with nothing else to run the engine
   prefills it (in the capped slice), because idle engine time costs nothing. Without
   that, ANNS at QPS 0.25 fell to 0.96x of non-streaming at P99 on seed 2 (1.03-1.27x
   with it, docs/performance.md).

Partial streams otherwise keep the fcfs order (first chunk arrival: older streams are
closer to their final chunk); idle partial streams rank last, so they are the first
eviction victims.
"""

from __future__ import annotations

from typing import ClassVar

from scheduler.policies import Key, Policy, _t, work_class
from scheduler.stream import Stream


class OursPolicy(Policy):
    name = "ours"
    #: Rough prefill rate (tokens/s) that turns pending tokens into seconds. Only the
    #: exchange rate between size and waiting depends on it, so it need not be exact
    #: (H200 TP=2 Llama-3.1-8B prefills ~50-75K tokens/s).
    TOKENS_PER_S: ClassVar[float] = 60_000.0
    #: Seconds of priority gained per second waited since the input became final.
    AGING: ClassVar[float] = 0.1
    #: Update-mode versions younger than this are not prefilled (s).
    HOLD_S: ClassVar[float] = 1.0
    partial_step_tokens: ClassVar[int | None] = 512
    partial_cap_modes: ClassVar[tuple[str, ...]] = ("update",)

    def key(self, s: Stream, now: float) -> Key:
        c = work_class(s)
        if c == 0:
            waited = now - _t(s.final_s)
            return (0, s.pending / self.TOKENS_PER_S - self.AGING * waited, s.seq)
        return (c, _t(s.first_chunk_s), s.seq)

    def hold_until(self, s: Stream, now: float) -> float | None:
        if s.mode != "update" or s.last_chunk_s is None or self.HOLD_S <= 0:
            return None
        return s.last_chunk_s + self.HOLD_S
