"""The streaming scheduler: two-phase steps over streams whose input keeps arriving.

Each step: ``schedule(now)`` plans and acquires, the engine runs the plan,
``finish_step(plan, sampled, now)`` commits. Between the two calls chunks may
arrive (``add_chunk``) and requests may be aborted; both are applied so that the
running step is never disturbed (update-mode cuts and aborts of in-flight
streams wait for the commit).

Plan (pure, planning.py): order live streams by the policy; walk them with the
token budget; if free + evictable memory does not cover the result, walk everyone
again with, as the memory budget, everything that is free or evictable plus what
the *lower-ranked* streams hold (they are preemptible). Acquire (acquire.py):
resume/reserve in plan order; when ``kv.reserve`` fails, preempt the lowest-ranked
planned-out stream ranked below the one being served that holds KV, and retry.

The KV manager is anything that satisfies ``scheduler.kv_protocol.KVManager``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Generic, TypeVar

from scheduler.acquire import Acquisition
from scheduler.cost_model import CostModel
from scheduler.kv_protocol import KVManager
from scheduler.plan import Event, StepPlan
from scheduler.planning import Chosen, Planner
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
    StreamState,
    UnknownStream,
)
from stream2llm.lcp import common_prefix_len

KV = TypeVar("KV", bound=KVManager, covariant=True)  # Scheduler[StreamKVCache] is a Scheduler[KVManager]


class Scheduler(Generic[KV]):
    """Streams, a policy, a KV manager; see the module docstring.

    ``reuse_prefix``: each chunk adopts KV the radix tree already holds for the
    stream's input (see ``reuse_prefix``); the serving worker wants it, the
    simulator turns it off (its cost tables are measured without prefix caching).
    """

    def __init__(
        self,
        kv: KV,
        policy: Policy | str = "fcfs",
        preemption: PreemptionMode = "cost",
        cost_model: CostModel | None = None,
        token_budget: int = 2048,
        artifact_cost_rule: bool = False,
        max_batch: int | None = None,
        reuse_prefix: bool = True,
    ) -> None:
        self.kv = kv
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.rule = PreemptionRule(preemption, cost_model, artifact_cost_rule)
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.page = kv.page_size
        self.reuses_prefix = reuse_prefix
        self.streams: dict[str, Stream] = {}
        self._seq = 0
        self._inflight: StepPlan | None = None
        self.last_decision_s = 0.0  # policy ordering + plan walk of the last schedule()
        self.last_acquire_s = 0.0  # KV resume/reserve/preempt of the last schedule()
        self.planner = Planner(self.policy)
        self._work: dict[str, Stream] = {}  # streams with pending > 0 (kept incrementally)
        self.stats: dict[str, int] = dict.fromkeys(
            ("recompute", "swap", "tokens_invalidated", "swap_out_tokens", "swap_in_tokens",
             "recomputed_tokens_dropped", "steps"), 0,
        )  # fmt: skip

    # ---- requests ---------------------------------------------------------------
    def get(self, rid: str) -> Stream:
        try:
            return self.streams[rid]
        except KeyError:
            raise UnknownStream(rid) from None

    def open(self, rid: str, mode: Mode, now: float, sampling: SamplingParams | None = None,
             extra_key: str | None = None) -> Stream:  # fmt: skip
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
        """Append (extend) or update (replace) the input, then (``reuse_prefix``)
        adopt cached KV for it; ``kept`` then counts the adopted KV too. Checks the
        stream's state only (the worker checks token ids and context length).
        Raises ``StreamError``."""
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
            assert self._inflight is not None
            after = s.computed + self._inflight.num_tokens.get(rid, 0)
            lcp = common_prefix_len(s.input_ids, new, limit=after)
            s.input_ids = new
            s.pending_input = new
            result = ChunkResult(lcp, after - lcp, True)
        else:
            new = list(token_ids)
            before = s.computed
            s.input_ids = new
            self._cut(s, s.input_ids)
            result = ChunkResult(s.computed, before - s.computed, False)
        s.note_chunk(now, final)
        limit = self.kv.capacity - 2 * self.page
        if len(s.input_ids) + s.sampling.max_new_tokens > limit:
            raise InputTooLong(f"{rid}: {len(s.input_ids)} input tokens exceed the KV pool")
        if not s.in_flight:
            self._ensure_sampleable(s)
        self._touch(s)
        if self.reuses_prefix and not s.in_flight and s.preempted is None:
            result = ChunkResult(self.reuse_prefix(rid), result.invalidated, result.deferred)
        return result

    def reuse_prefix(self, rid: str) -> int:
        """Adopt KV the radix tree already holds for this stream's input (another
        request's prompt, a shared template); returns the computed length.

        Only between steps, and never for a preempted stream (its KV is being
        restored). A final input keeps its last token uncomputed so there is
        something to sample from. ``add_chunk`` calls it (``reuse_prefix=True``)."""
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
        chosen, fits = self._walk(work, now, bounded=False)
        order: list[Stream] | None = None
        if not fits:  # memory binds: rank everyone (lower-ranked holders are preemptible)
            order = self.full_order(now)
            chosen, _ = self._walk(order, now, bounded=True)
        self.last_decision_s = perf_counter() - t0  # policy + plan, without KV allocation
        if self.planner.wake < float("inf"):
            plan.retry_at = self.planner.wake
        if chosen:
            Acquisition(self, order, chosen, plan, now).run()
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

    def plan(self, order: list[Stream], now: float = 0.0) -> Chosen:
        """Phase 1, no mutation: which streams run and how many tokens each."""
        chosen, fits = self._walk(order, now, bounded=False)
        return chosen if fits else self._walk(order, now, bounded=True)[0]

    def _walk(self, order: list[Stream], now: float, bounded: bool) -> tuple[Chosen, bool]:
        """The plan walk; ``bounded``: with the memory budget (shared prefixes counted
        once in what each stream holds)."""
        held = self.kv.held_by_rank([s.rid for s in order]) if bounded else None
        return self.planner.walk(
            order, now, self.token_budget, self.max_batch or 1 << 30, self.page,
            self.kv.available(), held,
        )  # fmt: skip

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
                self._cut(s, s.input_ids)
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

    def _close(self, s: Stream, aborted: bool, now: float) -> Event:
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

    def live(self) -> int:
        return len(self.streams)

    def has_work(self) -> bool:
        return any(s.pending > 0 and not s.abort_pending for s in self.streams.values())
