"""The streaming scheduler: two-phase steps over streams whose input keeps arriving.

Each step: ``schedule(now)`` plans and acquires, the engine runs the plan,
``finish_step(plan, sampled, now)`` commits. Between the two calls chunks may
arrive (``add_chunk``) and requests may be aborted; both are applied so that the
running step is never disturbed (update-mode cuts and aborts of in-flight
streams wait for the commit).

Plan (pure): order live streams by the policy; walk them with the token budget
and, as the memory budget, everything that is free or evictable plus what the
*lower-ranked* streams hold (they are preemptible). Acquire: resume/reserve in
plan order; when ``kv.reserve`` fails, preempt the lowest-ranked planned-out
stream ranked below the one being served that holds KV, and retry.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from scheduler.cost_model import CostModel
from scheduler.plan import Event, PlanItem, Preemption, StepPlan
from scheduler.policies import Policy
from scheduler.preemption import PreemptionMode, PreemptionRule
from scheduler.registry import get_policy
from scheduler.stream import (
    ChunkResult,
    DuplicateStream,
    InputTooLong,
    Mode,
    SamplingParams,
    Stream,
    StreamError,
    UnknownStream,
    common_prefix,
)


class Scheduler:
    """Streams, a policy, a KV manager; see the module docstring."""

    def __init__(
        self,
        kv: Any,
        policy: Policy | str = "fcfs",
        preemption: PreemptionMode = "cost",
        cost_model: CostModel | None = None,
        token_budget: int = 2048,
        artifact_cost_rule: bool = False,
        max_batch: int | None = None,
    ) -> None:
        self.kv = kv
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.rule = PreemptionRule(preemption, cost_model, artifact_cost_rule)
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.page = int(getattr(kv, "page_size", 1))
        self.streams: dict[str, Stream] = {}
        self._seq = 0
        self._inflight: StepPlan | None = None
        self.last_decision_s = 0.0  # policy ordering + plan walk of the last schedule()
        self.last_acquire_s = 0.0  # KV resume/reserve/preempt of the last schedule()
        pol = type(self.policy)
        self._holds = pol.hold_until is not Policy.hold_until
        self._limited = self._holds or pol.partial_step_tokens is not None
        self._wake = float("inf")  # earliest end of a hold seen by the last plan walk
        self._work: dict[str, Stream] = {}  # streams with pending > 0 (kept incrementally)
        self.stats: dict[str, int] = {
            "recompute": 0,
            "swap": 0,
            "tokens_invalidated": 0,
            "swap_out_tokens": 0,
            "swap_in_tokens": 0,
            "recomputed_tokens_dropped": 0,
            "steps": 0,
        }

    # ---- requests ---------------------------------------------------------------
    def get(self, rid: str) -> Stream:
        try:
            return self.streams[rid]
        except KeyError:
            raise UnknownStream(rid) from None

    def open(
        self,
        rid: str,
        mode: Mode,
        now: float,
        sampling: SamplingParams | None = None,
        extra_key: str | None = None,
    ) -> Stream:
        if rid in self.streams:
            raise DuplicateStream(f"{rid}: already open")
        if mode not in ("append", "update"):
            raise StreamError(f"{rid}: mode must be append or update, got {mode!r}")
        self.kv.open(rid, extra_key) if extra_key is not None else self.kv.open(rid)
        s = Stream(rid, mode, self._seq, now, sampling or SamplingParams())
        self._seq += 1
        self.streams[rid] = s
        return s

    def add_chunk(
        self, rid: str, token_ids: list[int] | tuple[int, ...], final: bool, now: float,
        index: int | None = None,
    ) -> ChunkResult:
        """Append (extend) or update (replace) the input. Raises ``StreamError``."""
        s = self.get(rid)
        s.check_chunk(now, index)
        if final and s.mode == "update" and not token_ids:
            raise StreamError(f"{rid}: empty final input")
        if s.mode == "append":
            if final and not token_ids and not s.input_ids:
                raise StreamError(f"{rid}: empty final input")
            s.input_ids.extend(token_ids)
            result = ChunkResult(s.computed, 0, s.in_flight)
        elif s.in_flight:  # cut after the running step commits: count it against that
            new = list(token_ids)
            after = s.computed + self._inflight_tokens(rid)
            lcp = common_prefix(s.input_ids, new, limit=after)
            s.input_ids = new
            s.pending_input = new
            result = ChunkResult(lcp, after - lcp, True)
        else:
            new = list(token_ids)
            before = s.computed
            s.input_ids = new
            self._truncate(s)
            result = ChunkResult(s.computed, before - s.computed, False)
        s.note_chunk(now, final)
        limit = self.kv.capacity - 2 * self.page
        if len(s.input_ids) + s.sampling.max_new_tokens > limit:
            raise InputTooLong(f"{rid}: {len(s.input_ids)} input tokens exceed the KV pool")
        if not s.in_flight:
            self._ensure_sampleable(s)
        self._touch(s)
        return result

    def reuse_prefix(self, rid: str) -> int:
        """Adopt KV the radix tree already holds for this stream's input (another
        request's prompt, a shared template); returns the computed length.

        Only between steps, and never for a preempted stream (its KV is being
        restored). A final input keeps its last token uncomputed so there is
        something to sample from. The runtime calls this after each chunk; the
        simulator does not (its tables are measured without prefix caching).
        """
        s = self.get(rid)
        if s.in_flight or s.preempted is not None:
            return s.computed
        ids = s.input_ids[:-1] if s.final and not s.outputs else s.input_ids
        if len(ids) > s.computed:
            s.computed = self.kv.reuse_prefix(rid, ids)
        return s.computed

    def release(self, rid: str) -> Event:
        """End a stream here without aborting it: its KV stays in the tree as cache.

        The prefill side of disaggregation uses it once the stream's KV has been
        exported to a decode server, so later requests with the same prefix (a
        shared template, the same documents) still hit the prefill server's cache.
        """
        s = self.get(rid)
        if s.in_flight:
            raise StreamError(f"{rid}: release during a step")
        return self._close(s, aborted=False, now=s.last_chunk_s or s.opened_s)

    def abort(self, rid: str) -> list[Event]:
        """Drop a request; its KV is freed (at once, or when its running step commits)."""
        s = self.get(rid)
        if s.in_flight:
            s.abort_pending = True
            return []
        return [self._close(s, aborted=True, now=s.last_chunk_s or s.opened_s)]

    # ---- the step --------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        """Plan, then acquire KV for the plan (preempting as needed)."""
        if self._inflight is not None:
            raise StreamError("schedule() called before finish_step() of the previous plan")
        t0 = perf_counter()
        plan = StepPlan(formed_s=now)
        key = self.policy.key
        work = sorted(
            (s for s in self._work.values() if not s.abort_pending), key=lambda s: key(s, now)
        )
        chosen, fits = self._plan_fast(work, now)
        order: list[Stream] | None = None
        if not fits:  # memory binds: rank everyone (lower-ranked holders are preemptible)
            order = self.full_order(now)
            chosen = self._plan_with_memory(order, now)
        self.last_decision_s = perf_counter() - t0  # policy + plan, without KV allocation
        if self._wake < float("inf"):
            plan.retry_at = self._wake
        if chosen:
            self._acquire(order, chosen, plan, now)
        self.last_acquire_s = perf_counter() - t0 - self.last_decision_s
        if plan.items:
            self._inflight = plan
            self.stats["steps"] += 1
        return plan

    def full_order(self, now: float) -> list[Stream]:
        key = self.policy.key
        return sorted(
            (s for s in self.streams.values() if not s.abort_pending), key=lambda s: key(s, now)
        )

    def plan(self, order: list[Stream], now: float = 0.0) -> list[tuple[Stream, int]]:
        """Phase 1, no mutation: which streams run and how many tokens each."""
        chosen, fits = self._plan_fast(order, now)
        return chosen if fits else self._plan_with_memory(order, now)

    def _cap(self, s: Stream, n: int, now: float, partial: int) -> int:
        """The policy's limits on a partial stream: held back (0) or the per-step cap
        on partial prefill (``partial`` tokens of it already planned)."""
        if s.final:
            return n
        if self._holds:
            t = self.policy.hold_until(s, now)
            if t is not None and t > now:
                self._wake = min(self._wake, t)
                return 0
        cap = self.policy.partial_step_tokens
        if cap is None or s.mode not in self.policy.partial_cap_modes:
            return n
        return min(n, cap - partial)

    def _plan_fast(
        self, order: list[Stream], now: float = 0.0
    ) -> tuple[list[tuple[Stream, int]], bool]:
        """Token budget only; ``fits`` if free + evictable memory covers it (then the
        memory-aware walk would choose exactly the same)."""
        budget = self.token_budget
        max_items = self.max_batch or 1 << 30
        page = self.page
        limited = self._limited
        self._wake = float("inf")
        out: list[tuple[Stream, int]] = []
        need = partial = 0
        for s in order:  # fast path: the token budget binds before memory does
            if budget <= 0 or len(out) >= max_items:
                break
            p = s.pending
            if p > 0:
                n = p if p < budget else budget
                if limited and not s.final:
                    n = self._cap(s, n, now, partial)
                    if n <= 0:
                        continue
                    partial += n
                out.append((s, n))
                budget -= n
                need += n + s.swapped_tokens + page
        return out, need <= self.kv.available()

    def _plan_with_memory(self, order: list[Stream], now: float = 0.0) -> list[tuple[Stream, int]]:
        by_rank = getattr(self.kv, "held_by_rank", None)  # shared prefixes counted once
        if by_rank is not None:
            held = by_rank([s.rid for s in order])
        else:
            held = [self.kv.held_tokens(s.rid) if s.computed else 0 for s in order]
        mem = self.kv.available() + sum(held)
        budget = self.token_budget
        max_items = self.max_batch or 1 << 30
        page = self.page
        limited = self._limited
        self._wake = float("inf")
        out: list[tuple[Stream, int]] = []
        partial = 0
        for s, h in zip(order, held, strict=True):
            mem -= h  # ranked at or above the next candidates: not preemptible for them
            if budget <= 0 or len(out) >= max_items:
                break
            p = s.pending
            if p <= 0:
                continue
            room = mem - s.swapped_tokens - page
            n = min(p, budget, room)
            if limited and not s.final and n > 0:
                n = self._cap(s, n, now, partial)
                partial += max(n, 0)
            if n <= 0:
                continue
            out.append((s, n))
            budget -= n
            mem -= n + s.swapped_tokens + page
        return out

    def _acquire(
        self, order: list[Stream] | None, chosen: list[tuple[Stream, int]], plan: StepPlan,
        now: float,
    ) -> None:
        """Phase 2: make chosen streams resident and reserve their slots, in order."""
        planned = {id(s) for s, _ in chosen}
        victims: list[Stream] = []
        rank: dict[int, int] = {}
        vi = -1

        def preempt_one(for_s: Stream, n: int) -> bool:
            nonlocal vi, victims, rank
            if vi < 0:  # rank everyone only when someone must be evicted
                full = order if order is not None else self.full_order(now)
                victims = [s for s in reversed(full) if id(s) not in planned]
                vkey = self.policy.victim_key
                if victims and vkey(victims[0], now) is not None:
                    victims.sort(key=lambda s: vkey(s, now))  # type: ignore[arg-type,return-value]
                rank = {id(s): i for i, s in enumerate(full)}
                vi = 0
            r = rank[id(for_s)]
            kept: set[int] | None = None
            while vi < len(victims):
                v = victims[vi]
                vi += 1
                if v.in_flight or v.preempted or rank[id(v)] < r or not v.computed:
                    continue
                held = self.kv.held_tokens(v.rid)
                if held <= 0:  # all shared: useful only if the sharers are victims too
                    if kept is None:
                        kept = self._kept_nodes(full_rank(), r, victims[vi - 1 :])
                    if kept is None or not self.kv.holds_beyond(v.rid, kept):
                        continue
                self._preempt(v, self.rule.choose(held, n), plan)
                return True
            return False

        def full_rank() -> list[Stream]:
            return order if order is not None else self.full_order(now)

        batch = self._reserve_batch(chosen) if order is None else {}
        for s, n in chosen:
            slots = batch.get(id(s))
            if slots is None:
                if s.preempted is not None:
                    if not self._resume(s, n, plan, preempt_one):
                        continue
                    n = min(n, s.pending)
                    if n <= 0:
                        continue
                slots = self.kv.reserve(s.rid, n)
                while slots is None and preempt_one(s, n):
                    slots = self.kv.reserve(s.rid, n)
                if slots is None:  # shrink to what fits (a partial chunk of prefill)
                    fit = (self.kv.available() // self.page) * self.page - self.page
                    if fit <= 0:
                        continue
                    n = min(n, fit)
                    slots = self.kv.reserve(s.rid, n)
                    if slots is None:
                        continue
            start = s.computed
            decode = bool(s.outputs) and n == 1 and start == s.seq_len - 1
            plan.items.append(
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
            s.last_sched_s = now
            self._touch(s)

    def _kept_nodes(self, full: list[Stream], r: int, later: list[Stream]) -> set[int] | None:
        """Tree nodes that streams which stay resident hold (every stream but the
        victims still to come, ``later``, ranked at or below ``r``); None when the KV
        manager cannot say. A victim whose path leaves these nodes frees that part
        once it and the later victims sharing it are preempted."""
        ids = getattr(self.kv, "path_node_ids", None)
        if ids is None:
            return None
        rank = {id(s): i for i, s in enumerate(full)}
        going = {id(v) for v in later if rank[id(v)] >= r and not v.in_flight}
        return ids([s.rid for s in full if id(s) not in going])  # type: ignore[no-any-return]

    def _reserve_batch(self, chosen: list[tuple[Stream, int]]) -> dict[int, Any]:
        """Fast path (the plan fits in free + evictable memory): reserve every resident
        item with one ``kv.reserve_many`` call. The allocator's fixed per-call cost was
        most of ``schedule()`` (docs/performance.md); ``{}`` leaves every item to the
        one-by-one path (KV managers without ``reserve_many``, or the pool said no)."""
        many = getattr(self.kv, "reserve_many", None)
        ready = [(s, n) for s, n in chosen if s.preempted is None]
        if many is None or len(ready) < 2:
            return {}
        got = many([(s.rid, n) for s, n in ready])
        if got is None:
            return {}
        return {id(s): slots for (s, _), slots in zip(ready, got, strict=True)}

    def finish_step(self, plan: StepPlan, sampled: dict[str, int], now: float) -> list[Event]:
        """Commit a computed plan; ``sampled`` has one token per item with ``sample``."""
        if not plan.items and plan is not self._inflight:
            return []  # an empty plan was never in flight
        if plan is not self._inflight:
            raise StreamError("finish_step() for a plan that is not the running one")
        self._inflight = None
        events: list[Event] = []
        for it in plan.items:
            s = self.streams[it.rid]
            self.kv.commit(it.rid, it.token_ids)
            s.in_flight = False
            s.computed = self.kv.computed(it.rid)
            if s.pending_input is not None:
                s.pending_input = None
                self._truncate(s)
            if s.abort_pending:
                events.append(self._close(s, aborted=True, now=now))
                continue
            if it.sample:
                try:
                    tok = int(sampled[it.rid])
                except KeyError:
                    raise StreamError(f"{it.rid}: no sampled token for a sample item") from None
                s.outputs.append(tok)
                if s.first_token_s is None:
                    s.first_token_s = now
                    events.append(Event("first_token", s.rid, now, tok))
                else:
                    events.append(Event("token", s.rid, now, tok))
                if len(s.outputs) >= s.sampling.max_new_tokens or s.sampling.is_eos(tok):
                    events.append(self._close(s, aborted=False, now=now))
                    continue
            self._ensure_sampleable(s)
            self._touch(s)
        return events

    # ---- helpers ------------------------------------------------------------------
    def _inflight_tokens(self, rid: str) -> int:
        assert self._inflight is not None
        for it in self._inflight.items:
            if it.rid == rid:
                return it.num_tokens
        return 0

    def _truncate(self, s: Stream) -> None:
        """Cut the KV to the LCP of what is computed and the new input."""
        self._cut(s, s.input_ids)

    def _cut(self, s: Stream, ids: list[int]) -> None:
        """Cut the KV to the LCP with ``ids``; a swapped copy past the cut is gone."""
        before = s.computed
        self.kv.truncate(s.rid, ids)
        s.computed = self.kv.computed(s.rid)
        lost = before - s.computed
        if lost > 0:
            s.tokens_invalidated += lost
            self.stats["tokens_invalidated"] += lost
            if s.preempted == "swap":  # the KV manager drops a swapped copy on a cut
                s.preempted, s.swapped_tokens = "recompute", 0

    def _ensure_sampleable(self, s: Stream) -> None:
        """A final input fully cached (identical update, prefix hit) still needs one
        token computed to sample from: recompute the last input token."""
        if s.final and not s.outputs and s.pending <= 0 and s.input_ids:
            self._cut(s, s.input_ids[:-1])

    def _preempt(self, v: Stream, kind: str, plan: StepPlan) -> None:
        before = v.computed
        res = self.kv.preempt(v.rid, kind)
        kind = getattr(res, "mode", kind)
        v.computed = self.kv.computed(v.rid)
        if kind == "swap" and res.swapped > 0:
            v.preempted, v.swapped_tokens = "swap", int(res.swapped)
            self.stats["swap_out_tokens"] += v.swapped_tokens
            tokens = v.swapped_tokens
        else:
            kind = "recompute"
            v.preempted, v.swapped_tokens = "recompute", 0
            tokens = before - v.computed
            self.stats["recomputed_tokens_dropped"] += tokens
        v.preemptions += 1
        self._touch(v)
        self.stats[kind] += 1
        plan.preempted.append(Preemption(v.rid, kind, tokens, int(res.freed)))  # type: ignore[arg-type]

    def _resume(self, s: Stream, n: int, plan: StepPlan, preempt_one: Any) -> bool:
        ok = self.kv.resume(s.rid)
        while not ok and preempt_one(s, n):
            ok = self.kv.resume(s.rid)
        if not ok:
            return False
        before, s.computed = s.computed, self.kv.computed(s.rid)
        if s.swapped_tokens and s.computed >= before:  # else: the prefix was evicted and
            plan.swapped_in.append((s.rid, s.swapped_tokens))  # the host copy dropped
            self.stats["swap_in_tokens"] += s.swapped_tokens
        s.preempted, s.swapped_tokens = None, 0
        self._ensure_sampleable(s)
        self._touch(s)
        return True

    def _close(self, s: Stream, aborted: bool, now: float) -> Event:
        from scheduler.stream import StreamState

        self.kv.close(s.rid, keep_cache=not aborted)
        s.terminal = StreamState.ABORTED if aborted else StreamState.FINISHED
        s.done_s = now
        del self.streams[s.rid]
        self._work.pop(s.rid, None)
        return Event("aborted" if aborted else "finished", s.rid, now)

    def _touch(self, s: Stream) -> None:
        """Keep ``_work`` (streams with pending tokens, not in flight) up to date."""
        if s.pending > 0 and not s.in_flight and s.terminal is None:
            self._work[s.rid] = s
        else:
            self._work.pop(s.rid, None)

    # ---- introspection ------------------------------------------------------------
    def live(self) -> int:
        return len(self.streams)

    def has_work(self) -> bool:
        return any(s.pending > 0 and not s.abort_pending for s in self.streams.values())
