"""Discrete-event simulator: the real scheduler against a simulated engine.

Nothing here re-implements scheduling: ``scheduler.core.Scheduler`` and the real
``radix_stream.StreamKVCache`` (a counting pool of slot indices) do all of it.
The simulated engine only (1) turns a plan into a duration with the hardware cost
model (step time + swap-out + swap-in transfers, all blocking like the artifact)
and (2) returns token 1 for every item that samples.

Events, in time order: chunk arrivals (each query pushes its next chunk when the
previous one is delivered, so the heap stays small) and step completions. The
engine runs one step at a time and starts the next as soon as there is work.
Chunks that land while a step runs are delivered *during* it, exercising the
scheduler's snapshot of ``final``.

The non-streaming baseline feeds the same engine one final chunk (the whole
input) when retrieval ends. TTFT is timed from that moment (the paper's
definition) for both, and also from query arrival.

Fixed costs (the profile's ``fixed``, scheduler.cost_model.FixedCosts) are what
a real server pays besides the forward pass, charged where the server pays them:
a chunk reaches the scheduler ``chunk_s`` + its tokenization after the client
sent it; every step costs ``step_s`` more, plus the LM head/sampler for the
items that sample, plus what the profile's ``idle`` points charge a step that
starts after the engine sat idle; the client has the first token ``request_s`` after the
worker sampled it (a streaming client, which asks for it with a request of its own,
``result_s``). With ``client_awaits_acks`` a streaming client sends a chunk
only once the previous one was acknowledged, and the worker acknowledges only
between steps (one loop applies messages and runs steps), as ``stream2llm
replay`` against ``stream2llm serve`` does; the TTFT clock then starts when the
final chunk is really sent.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler.core import Scheduler
from scheduler.cost_model import CostModel
from scheduler.plan import StepPlan
from scheduler.registry import get_policy
from scheduler.stream import InputTooLong, SamplingParams
from stream2llm.trace import Chunk, Query

if TYPE_CHECKING:
    from radix_stream import StreamKVCache

_CHUNK, _STEP, _WAKE = 0, 1, 2  # _WAKE: a policy's hold ends (StepPlan.retry_at)


def make_kv(
    capacity_tokens: int, page_size: int, host_capacity_tokens: int | None
) -> StreamKVCache:
    """The real KV manager (counting only: no tensors behind the slots)."""
    from radix_stream import StreamKVCache

    cap = (capacity_tokens // page_size) * page_size
    return StreamKVCache.create(
        capacity_tokens=cap, page_size=page_size, host_capacity_tokens=host_capacity_tokens
    )


@dataclass
class SimConfig:
    policy: str = "fcfs"
    preemption: str = "cost"
    hardware: str = "h200-tp2-llama3-8b"
    token_budget: int = 2048
    artifact_cost_rule: bool = False
    streaming: bool = True
    kv_capacity_tokens: int | None = None  # None: the profile's derived pool
    page_size: int = 16
    host_factor: float = 2.0  # host swap pool, as a multiple of the device pool
    max_batch: int | None = None
    tokenize: bool = True  # charge the profile's tokenization cost (text inputs)
    client_awaits_acks: bool = False  # see the module docstring

    def label(self) -> str:
        """Streaming runs are named by policy; the non-streaming baseline is plain
        "non-streaming" with fcfs order, "non-streaming-<policy>" with another order."""
        if self.streaming:
            return self.policy
        return "non-streaming" if self.policy == "fcfs" else f"non-streaming-{self.policy}"


@dataclass
class SimResult:
    config: SimConfig
    ttft_s: list[float] = field(default_factory=list)
    ttft_from_arrival_s: list[float] = field(default_factory=list)
    #: each TTFT's legs by query: "in" (sent -> the worker applies the final chunk,
    #: between steps), "worker" (-> first token sampled), "out" (-> the client has it)
    legs_s: dict[str, dict[str, float]] = field(default_factory=dict)
    completion_time_s: float = 0.0
    preemptions: dict[str, int] = field(default_factory=dict)
    tokens_invalidated: int = 0
    steps: int = 0
    busy_s: float = 0.0
    unfinished: int = 0
    rejected: int = 0  # inputs larger than the KV pool
    stats: dict[str, int] = field(default_factory=dict)
    decision_s: float = 0.0  # wall time spent inside schedule()

    @property
    def ttft_by_qid(self) -> dict[str, float]:
        """Each query's TTFT (the sum of its legs), for tail diagnostics."""
        return {q: sum(legs.values()) for q, legs in self.legs_s.items()}


def non_streaming(q: Query) -> Query:
    """The same query sent whole, once retrieval has ended."""
    last = q.chunks[-1]
    whole = Chunk(t_s=last.t_s, token_ids=q.final_token_ids(), final=True)
    return Query(q.qid, q.arrival_s, "append", (whole,), q.max_new_tokens, q.meta)


STRETCH_MODES = ("all", "gaps")


def stretch_first(q: Query, m: float) -> Query:
    """Multiply the first chunk's offset by ``m`` too (all later chunks shift with it).

    The generator's ``delay_multiplier`` stretches the gaps between chunks; this adds
    the search latency before the first chunk, so that every delay is stretched."""
    shift = q.chunks[0].t_s * (m - 1.0)
    chunks = tuple(Chunk(c.t_s + shift, c.token_ids, c.text, c.final) for c in q.chunks)
    return Query(q.qid, q.arrival_s, q.mode, chunks, q.max_new_tokens, q.meta)


def stretch_delays(queries: Sequence[Query], m: float, stretch: str = "all") -> list[Query]:
    """Apply the rest of a delay multiplier to traces whose gaps are already stretched
    (``generate(..., delay_multiplier=m)``): ``"all"`` (the default decision: the
    paper's ANNS driver stretches every delay, the search latency included) also
    stretches the first chunk's offset; ``"gaps"`` leaves it."""
    if stretch not in STRETCH_MODES:
        raise ValueError(f"stretch must be one of {STRETCH_MODES}, got {stretch!r}")
    if stretch == "gaps" or m == 1.0:
        return list(queries)
    return [stretch_first(q, m) for q in queries]


def simulate(
    queries: Sequence[Query], cfg: SimConfig, cost_model: CostModel | None = None,
    progress: bool = False,
) -> SimResult:
    import time

    cm = cost_model or CostModel.load(cfg.hardware)
    cap = cfg.kv_capacity_tokens or cm.kv_capacity_tokens
    if not cap:
        raise ValueError(f"profile {cm.name} has no kv_capacity_tokens; pass kv_capacity_tokens")
    kv = make_kv(int(cap), cfg.page_size, int(cap * cfg.host_factor))
    sched = Scheduler(
        kv,
        policy=get_policy(cfg.policy),
        preemption=cfg.preemption,  # type: ignore[arg-type]
        cost_model=cm,
        token_budget=cfg.token_budget,
        artifact_cost_rule=cfg.artifact_cost_rule,
        max_batch=cfg.max_batch,
        reuse_prefix=False,  # the cost tables are measured without prefix caching
    )
    qs = [q if cfg.streaming else non_streaming(q) for q in queries]
    fx = cm.fixed
    awaits = cfg.client_awaits_acks and cfg.streaming
    out_s = fx.out_s(cfg.streaming)

    def in_path(c: Chunk) -> float:  # client send -> the worker has the chunk
        n = len(c.token_ids or ())
        return fx.chunk_s + (fx.tokenize_s(n) if cfg.tokenize else 0.0)

    # when each query's latest chunk was sent (the final one starts the TTFT clock)
    sent_at = [q.arrival_s + q.chunks[0].t_s for q in qs]
    ack_final = [0.0] * len(qs)  # when the client got the final chunk's reply
    applied = [0.0] * len(qs)  # when the worker applied the final chunk (between steps)
    index = {q.qid: i for i, q in enumerate(qs)}
    heap: list[tuple[float, int, int, int, int]] = []
    order = 0
    for i, q in enumerate(qs):
        heapq.heappush(heap, (sent_at[i] + in_path(q.chunks[0]), order, _CHUNK, i, 0))
        order += 1
    step_end = 0.0  # end of the step in flight (the worker replies only between steps)
    res = SimResult(cfg)
    plan: StepPlan | None = None  # the step in flight (its _STEP event is in the heap)
    done = 0
    last_finish = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(qs), desc=cfg.label(), unit="q", mininterval=1.0, leave=False)
    half_swap = lambda n: cm.swap_s(n) / 2  # noqa: E731  (one direction of the out+in curve)
    wake_at = math.inf  # pending _WAKE event, if any (one at a time is enough)

    while heap:
        now, _, kind, i, j = heapq.heappop(heap)
        if kind == _CHUNK:
            q = qs[i]
            c = q.chunks[j]
            if j == 0:
                sched.open(q.qid, q.mode, now, SamplingParams(max_new_tokens=q.max_new_tokens))
            try:
                sched.add_chunk(q.qid, c.token_ids or (), c.final, now, index=j)
            except InputTooLong:  # never fits the pool: rejected, like a real server
                sched.abort(q.qid)
                res.rejected += 1
                continue
            took = step_end if plan is not None else now  # the worker applies between steps
            ack = took + fx.ack_s
            if c.final:
                ack_final[i], applied[i] = ack, took
            if j + 1 < len(q.chunks):
                nxt = q.chunks[j + 1]
                send = q.arrival_s + nxt.t_s
                if awaits:
                    send = max(send, ack)
                sent_at[i] = send
                # a stream's chunks are applied in order (the API room's per-stream lock)
                heapq.heappush(heap, (max(send + in_path(nxt), now), order, _CHUNK, i, j + 1))
                order += 1
        elif kind == _WAKE:
            wake_at = math.inf
        else:
            assert plan is not None  # a _STEP event is pushed together with its plan
            sampled = {it.rid: 1 for it in plan.items if it.sample}
            for ev in sched.finish_step(plan, sampled, now):
                k = index[ev.rid]
                if ev.kind == "first_token":
                    # a streaming client asks for the result once its final chunk is acked
                    seen = (max(now, ack_final[k]) if awaits else now) + out_s
                    res.ttft_s.append(seen - sent_at[k])
                    res.legs_s[ev.rid] = {"in": applied[k] - sent_at[k],
                                          "worker": now - applied[k], "out": seen - now}
                    res.ttft_from_arrival_s.append(seen - qs[k].arrival_s)
                elif ev.kind == "finished":
                    done += 1
                    last_finish = max(last_finish, now + out_s)
                    if bar is not None:
                        bar.update(1)
            plan = None
        if plan is None and heap and heap[0][0] == now and heap[0][2] == _CHUNK:
            continue  # deliver every chunk of this instant before planning
        if plan is None:
            t0 = time.perf_counter()
            p = sched.schedule(now)
            res.decision_s += time.perf_counter() - t0
            if p.items:
                samples = sum(1 for it in p.items if it.sample)
                dur = cm.engine_step_s([(it.start, it.num_tokens) for it in p.items], samples)
                dur += cm.idle_s(now - step_end if res.busy_s else math.inf)  # a cold start
                dur += sum(half_swap(pr.tokens) for pr in p.preempted if pr.kind == "swap")
                dur += sum(half_swap(n) for _, n in p.swapped_in)
                res.busy_s += dur
                plan = p
                step_end = now + dur
                heapq.heappush(heap, (step_end, order, _STEP, -1, -1))
                order += 1
            elif p.retry_at is not None and p.retry_at < wake_at:  # idle until a hold ends
                wake_at = p.retry_at
                heapq.heappush(heap, (wake_at, order, _WAKE, -1, -1))
                order += 1
    if bar is not None:
        bar.close()
    res.completion_time_s = last_finish - min((q.arrival_s for q in qs), default=0.0)
    res.unfinished = len(qs) - done - res.rejected
    res.preemptions = {"recompute": sched.stats["recompute"], "swap": sched.stats["swap"]}
    res.tokens_invalidated = sched.stats["tokens_invalidated"]
    res.steps = sched.stats["steps"]
    res.stats = dict(sched.stats)
    return res


def row(res: SimResult) -> dict[str, object]:
    """The results-JSON entry (eval.metrics.result_row schema) plus diagnostics."""
    from eval.metrics import PERCENTILE_KEYS, result_row

    out = result_row(
        scheduler=res.config.label(),
        streaming=res.config.streaming,
        ttfts=res.ttft_s,
        ttfts_from_arrival=res.ttft_from_arrival_s,
        completion_time_s=res.completion_time_s,
        preemptions=res.preemptions,
        tokens_invalidated=res.tokens_invalidated,
    )
    out["preemption"] = res.config.preemption
    out["artifact_cost_rule"] = res.config.artifact_cost_rule
    out["steps"] = res.steps
    out["unfinished"] = res.unfinished
    out["rejected"] = res.rejected
    out["engine_busy_s"] = round(res.busy_s, 3)
    out["swap_tokens"] = {
        "out": res.stats.get("swap_out_tokens", 0), "in": res.stats.get("swap_in_tokens", 0)
    }
    out["mean_decision_us"] = round(1e6 * res.decision_s / max(res.steps, 1), 1)
    if res.unfinished:
        out["ttft_s"] = {k: math.nan for k in PERCENTILE_KEYS}
    return out
