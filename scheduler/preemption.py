"""Choosing how to preempt a victim: recompute or swap.

Kept apart from the step logic so the rule can be tested on its own and the
artifact's quirk stays a visible switch.

- ``recompute``/``swap``: always that.
- ``cost``: recompute if prefill(n) < swap_out+swap_in(n), where ``n`` is the
  *victim's* cached tokens (what preempting it throws away or moves).
- ``artifact_cost_rule=True``: the same comparison at the size of the request
  being scheduled (the published artifact's code), kept to reproduce its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scheduler.cost_model import CostModel

PreemptionMode = Literal["cost", "recompute", "swap"]
PREEMPTION_MODES: tuple[str, ...] = ("cost", "recompute", "swap")


@dataclass
class PreemptionRule:
    mode: PreemptionMode = "cost"
    cost_model: CostModel | None = None
    artifact_cost_rule: bool = False
    decisions: dict[str, int] = field(default_factory=lambda: {"recompute": 0, "swap": 0})

    def __post_init__(self) -> None:
        if self.mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {PREEMPTION_MODES}, got {self.mode!r}")
        if self.mode == "cost" and self.cost_model is None:
            raise ValueError("preemption='cost' needs a cost_model")

    def choose(self, victim_tokens: int, scheduled_tokens: int) -> Literal["recompute", "swap"]:
        if self.mode == "recompute":
            return "recompute"
        if self.mode == "swap":
            return "swap"
        assert self.cost_model is not None
        n = scheduled_tokens if self.artifact_cost_rule else victim_tokens
        return "recompute" if self.cost_model.prefill_s(n) < self.cost_model.swap_s(n) else "swap"
