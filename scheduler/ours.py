"""Our policy (placeholder, tuned with the simulator)."""

from __future__ import annotations

from scheduler.policies import Key, Policy, _t, register, work_class
from scheduler.stream import Stream


@register
class OursPolicy(Policy):
    name = "ours"

    def key(self, s: Stream, now: float) -> Key:
        c = work_class(s)
        if c == 0:
            return (0, _t(s.final_s), s.seq)
        return (c, _t(s.first_chunk_s), s.seq)
