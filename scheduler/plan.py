"""What one step computes: the plan handed to the engine, and the events back.

Follows vLLM V1's contract: a step is ``{rid: num_tokens}`` plus, per item, the
exact token ids, their start position and whether the engine must sample after
them. ``sample`` is decided when the plan is formed (the *snapshot*), so a
final chunk that lands while the step runs can never make a token appear early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch


@dataclass(slots=True)
class PlanItem:
    rid: str
    start: int  # position of token_ids[0]; kv.slots(rid)[:start] is the cached prefix
    token_ids: list[int]
    sample: bool  # completes the final input, or is a decode step: sample one token
    new_slots: torch.Tensor  # kv.reserve(...) result: slots for [start, start+n)
    decode: bool = False  # the only token is the last sampled output

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class Preemption:
    rid: str
    kind: Literal["recompute", "swap"]
    tokens: int  # computed tokens whose KV was dropped (recompute) or moved to host (swap)
    freed: int  # device slots returned


@dataclass(slots=True)
class StepPlan:
    formed_s: float
    items: list[PlanItem] = field(default_factory=list)
    preempted: list[Preemption] = field(default_factory=list)
    swapped_in: list[tuple[str, int]] = field(default_factory=list)  # (rid, tokens restored)
    # Earliest time a stream the policy held back becomes runnable (None: nobody held).
    # An engine with nothing else to do should call schedule() again by then.
    retry_at: float | None = None

    @property
    def num_tokens(self) -> dict[str, int]:
        return {it.rid: it.num_tokens for it in self.items}

    @property
    def total_tokens(self) -> int:
        return sum(len(it.token_ids) for it in self.items)

    @property
    def empty(self) -> bool:
        return not self.items

    def swap_out_tokens(self) -> int:
        return sum(p.tokens for p in self.preempted if p.kind == "swap")

    def swap_in_tokens(self) -> int:
        return sum(n for _, n in self.swapped_in)


EventKind = Literal["first_token", "token", "finished", "aborted"]


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    rid: str
    t: float
    token: int | None = None
