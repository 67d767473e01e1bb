"""Phase 2 of a step: make the planned streams resident and reserve their slots.

In plan order: resume a preempted stream (swap its KV back in), then reserve
slots for its planned tokens. When the KV manager says no, preempt the
lowest-ranked stream that is not planned, is ranked below the one being served
and holds KV (``rule`` picks recompute or swap), and retry; when nobody is left
to preempt, shrink the item to what fits (a partial chunk of prefill) or skip it.
When the plan fits in free + evictable memory (``order`` is None), every resident
item is reserved with one ``reserve_many`` call first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler.plan import PlanItem, Preemption, StepPlan
from scheduler.stream import PreemptKind, Stream

if TYPE_CHECKING:
    import torch

    from scheduler.core import Scheduler
    from scheduler.kv_protocol import KVManager


class Acquisition:
    """One step's acquisition; ``run`` fills ``plan.items`` (and ``plan.preempted``)."""

    def __init__(
        self,
        sched: Scheduler[KVManager],
        order: list[Stream] | None,
        chosen: list[tuple[Stream, int]],
        plan: StepPlan,
        now: float,
    ) -> None:
        self.sched, self.kv, self.order, self.chosen = sched, sched.kv, order, chosen
        self.plan, self.now = plan, now
        self.planned = {id(s) for s, _ in chosen}
        self.victims: list[Stream] = []  # ranked lowest first, filled on first need
        self.rank: dict[int, int] = {}
        self.next_victim = -1

    def run(self) -> None:
        sched, kv, page = self.sched, self.kv, self.sched.page
        batch = self.reserve_batch() if self.order is None else {}
        for s, n in self.chosen:
            slots = batch.get(id(s))
            if slots is None:
                if s.preempted is not None:
                    if not self.resume(s, n):
                        continue
                    n = min(n, s.pending)
                    if n <= 0:
                        continue
                slots = kv.reserve(s.rid, n)
                while slots is None and self.preempt_one(s, n):
                    slots = kv.reserve(s.rid, n)
                if slots is None:  # shrink to what fits (a partial chunk of prefill)
                    fit = (kv.available() // page) * page - page
                    if fit <= 0:
                        continue
                    n = min(n, fit)
                    slots = kv.reserve(s.rid, n)
                    if slots is None:
                        continue
            start = s.computed
            decode = bool(s.outputs) and n == 1 and start == s.seq_len - 1
            self.plan.items.append(
                PlanItem(
                    rid=s.rid,
                    start=start,
                    token_ids=s.tokens(start, n),
                    sample=s.final and start + n == s.seq_len,
                    new_slots=slots,
                    decode=decode,
                )
            )
            s.in_flight = True
            s.last_sched_s = self.now
            sched._touch(s)

    def full_order(self) -> list[Stream]:
        return self.order if self.order is not None else self.sched.full_order(self.now)

    def preempt_one(self, for_s: Stream, n: int) -> bool:
        """Preempt the next victim for ``for_s`` (needing ``n`` tokens); False if none."""
        if self.next_victim < 0:  # rank everyone only when someone must be evicted
            full = self.full_order()
            victims = [s for s in reversed(full) if id(s) not in self.planned]
            vkey = self.sched.policy.victim_key
            if victims and vkey(victims[0], self.now) is not None:
                victims.sort(key=lambda s: vkey(s, self.now))  # type: ignore[arg-type,return-value]
            self.victims, self.next_victim = victims, 0
            self.rank = {id(s): i for i, s in enumerate(full)}
        rank, victims = self.rank, self.victims
        r = rank[id(for_s)]
        kept: set[int] | None = None
        while self.next_victim < len(victims):
            v = victims[self.next_victim]
            self.next_victim += 1
            if v.in_flight or v.preempted or rank[id(v)] < r or not v.computed:
                continue
            held = self.kv.held_tokens(v.rid)
            if held <= 0:  # all shared: useful only if the sharers are victims too
                if kept is None:
                    kept = self.kept_nodes(self.full_order(), r, victims[self.next_victim - 1 :])
                if not self.kv.holds_beyond(v.rid, kept):
                    continue
            self.preempt(v, self.sched.rule.choose(held, n))
            return True
        return False

    def kept_nodes(self, full: list[Stream], r: int, later: list[Stream]) -> set[int]:
        """Tree nodes that streams which stay resident hold (every stream but the
        victims still to come, ``later``, ranked at or below ``r``). A victim whose
        path leaves these nodes frees that part once it and the later victims
        sharing it are preempted."""
        rank = {id(s): i for i, s in enumerate(full)}
        going = {id(v) for v in later if rank[id(v)] >= r and not v.in_flight}
        return self.kv.path_node_ids([s.rid for s in full if id(s) not in going])

    def reserve_batch(self) -> dict[int, torch.Tensor]:
        """Fast path (the plan fits in free + evictable memory): reserve every resident
        item with one ``kv.reserve_many`` call. The allocator's fixed per-call cost was
        most of ``schedule()`` (docs/performance.md); ``{}`` (fewer than two items, or
        the pool said no) leaves every item to the one-by-one path."""
        ready = [(s, n) for s, n in self.chosen if s.preempted is None]
        if len(ready) < 2:
            return {}
        got = self.kv.reserve_many([(s.rid, n) for s, n in ready])
        if got is None:
            return {}
        return {id(s): slots for (s, _), slots in zip(ready, got, strict=True)}

    def preempt(self, v: Stream, kind: PreemptKind) -> None:
        sched = self.sched
        before = v.computed
        res = self.kv.preempt(v.rid, kind)
        kind = res.mode
        v.computed = self.kv.computed(v.rid)
        if kind == "swap" and res.swapped > 0:
            v.preempted, v.swapped_tokens = "swap", int(res.swapped)
            sched.stats["swap_out_tokens"] += v.swapped_tokens
            tokens = v.swapped_tokens
        else:
            kind = "recompute"
            v.preempted, v.swapped_tokens = "recompute", 0
            tokens = before - v.computed
            sched.stats["recomputed_tokens_dropped"] += tokens
        v.preemptions += 1
        sched._touch(v)
        sched.stats[kind] += 1
        self.plan.preempted.append(Preemption(v.rid, kind, tokens, int(res.freed)))

    def resume(self, s: Stream, n: int) -> bool:
        sched = self.sched
        ok = self.kv.resume(s.rid)
        while not ok and self.preempt_one(s, n):
            ok = self.kv.resume(s.rid)
        if not ok:
            return False
        before, s.computed = s.computed, self.kv.computed(s.rid)
        if s.swapped_tokens and s.computed >= before:  # else: the prefix was evicted and
            self.plan.swapped_in.append((s.rid, s.swapped_tokens))  # the host copy dropped
            sched.stats["swap_in_tokens"] += s.swapped_tokens
        s.preempted, s.swapped_tokens = None, 0
        sched._ensure_sampleable(s)
        sched._touch(s)
        return True

