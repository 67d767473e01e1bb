"""Cluster simulation: R replicas, each the real single-replica simulator
(``eval.sim.simulate``), behind a routing policy.

Why this split: a replica's behaviour (scheduling, preemption, TTFT) is exactly
what ``eval.sim`` already simulates with the real scheduler; what a cluster adds
is *which replica each query lands on*. The router decides when a query first
reaches it (the first chunk for a stream; the whole input, once retrieval ends,
for non-streaming) from what a router can observe, tracked here event by event
(chunk arrivals and the router's own estimate of when a request ends):

- ``random``, ``round_robin``: sglang-router's policies of those names;
- ``least_kv``: fewest KV tokens held (input tokens delivered to the replica's live
  requests), what a KV-usage load report gives a router;
- ``stream_aware``: ``least_kv`` plus the input the replica's open streams are still
  expected to receive (running mean of the final input sizes seen so far minus
  what each open stream has delivered). A stream that has sent 1 of its 10
  chunks holds little KV now but will need prefill and memory soon; no
  sglang-router policy can see that.

A ``hot`` fraction of queries is pinned to replica 0 whatever the policy (sticky
sessions, a corpus cached there), the skewed scenario. Each replica's share is
then simulated on its own with ``eval.sim.simulate`` and the TTFTs pooled.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from eval.sim import SimConfig, SimResult, non_streaming, simulate
from scheduler.cost_model import CostModel
from stream2llm.trace import Query

POLICIES = ("random", "round_robin", "least_kv", "stream_aware")


@dataclass
class ClusterConfig:
    replicas: int
    policy: str = "least_kv"
    hot_fraction: float = 0.0  # share of queries pinned to replica 0
    seed: int = 0
    sim: SimConfig = field(default_factory=SimConfig)


@dataclass
class ClusterResult:
    config: ClusterConfig
    ttft_s: list[float] = field(default_factory=list)
    preemptions: dict[str, int] = field(default_factory=dict)
    per_replica: list[int] = field(default_factory=list)  # queries per replica
    unfinished: int = 0
    rejected: int = 0


class _Loads:
    """What the router knows of each replica, advanced event by event."""

    def __init__(self, replicas: int) -> None:
        self.kv = [0.0] * replicas  # input tokens of live requests
        self.open_n = [0] * replicas  # live streams not final yet
        self.open_tokens = [0.0] * replicas  # tokens those streams delivered
        self.finals, self.final_sum = 0, 0.0  # running mean of final input sizes

    def stream_aware(self, r: int) -> float:
        mean = self.final_sum / self.finals if self.finals else 0.0
        return self.kv[r] + max(0.0, self.open_n[r] * mean - self.open_tokens[r])


def _sizes(q: Query) -> list[int]:
    """The query's input size after each chunk."""
    out, total = [], 0
    for c in q.chunks:
        n = len(c.token_ids or ())
        total = n if q.mode == "update" else total + n
        out.append(total)
    return out


def assign(queries: Sequence[Query], cfg: ClusterConfig, tpot_s: float) -> list[int]:
    """The replica of each query (same order as ``queries``) under ``cfg.policy``.

    ``queries`` are as the router sees them (non-streaming ones have one chunk).
    A request counts as live until its final input + ``max_new_tokens * tpot_s``.
    """
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown routing policy {cfg.policy!r} (one of {', '.join(POLICIES)})")
    rng = random.Random(cfg.seed)
    hot = [rng.random() < cfg.hot_fraction for _ in queries]
    loads = _Loads(cfg.replicas)
    out = [-1] * len(queries)
    # events: (time, order, kind, query, chunk index); kind 0 = chunk, 1 = ends
    ev: list[tuple[float, int, int, int, int]] = []
    for i, q in enumerate(queries):
        ev.append((q.arrival_s + q.chunks[0].t_s, i, 0, i, 0))
    heapq.heapify(ev)
    order = len(queries)
    sizes = [_sizes(q) for q in queries]
    rr = 0
    while ev:
        t, _, kind, i, j = heapq.heappop(ev)
        q = queries[i]
        if kind == 1:  # the router's estimate of the end
            loads.kv[out[i]] -= sizes[i][-1]
            continue
        if j == 0:
            if hot[i]:
                r = 0
            elif cfg.policy == "random":
                r = rng.randrange(cfg.replicas)
            elif cfg.policy == "round_robin":
                r, rr = rr, (rr + 1) % cfg.replicas
            else:
                score = loads.kv if cfg.policy == "least_kv" else [
                    loads.stream_aware(k) for k in range(cfg.replicas)]
                low = min(score)
                r = rng.choice([k for k, v in enumerate(score) if v == low])
            out[i] = r
            if not q.chunks[0].final:
                loads.open_n[r] += 1
        r = out[i]
        prev = sizes[i][j - 1] if j else 0
        loads.kv[r] += sizes[i][j] - prev
        if not q.chunks[j].final:
            loads.open_tokens[r] += sizes[i][j] - prev
        if q.chunks[j].final:
            if j:  # it was an open stream until now
                loads.open_n[r] -= 1
                loads.open_tokens[r] -= prev
            loads.finals += 1
            loads.final_sum += sizes[i][j]
            heapq.heappush(ev, (t + q.max_new_tokens * tpot_s, order, 1, i, j))
            order += 1
        else:
            heapq.heappush(ev, (q.arrival_s + q.chunks[j + 1].t_s, order, 0, i, j + 1))
            order += 1
    return out


def simulate_cluster(queries: Sequence[Query], cfg: ClusterConfig,
                     cost_model: CostModel | None = None) -> ClusterResult:  # fmt: skip
    """Route, then run every replica's share through ``eval.sim.simulate``."""
    cm = cost_model or CostModel.load(cfg.sim.hardware)
    seen = [q if cfg.sim.streaming else non_streaming(q) for q in queries]
    tpot = cm.step_s([(1024, 1)])
    where = assign(seen, cfg, tpot)
    shares: list[list[Query]] = [[] for _ in range(cfg.replicas)]
    for q, r in zip(queries, where, strict=True):
        shares[r].append(q)
    res = ClusterResult(cfg, per_replica=[len(s) for s in shares],
                        preemptions={"recompute": 0, "swap": 0})  # fmt: skip
    for share in shares:
        if not share:
            continue
        one: SimResult = simulate(share, cfg.sim, cm)
        res.ttft_s += one.ttft_s
        for k, v in one.preemptions.items():
            res.preemptions[k] = res.preemptions.get(k, 0) + v
        res.unfinished += one.unfinished
        res.rejected += one.rejected
    return res


def pooled(results: Sequence[ClusterResult]) -> ClusterResult:
    """Several runs (seeds) of one configuration as one: TTFTs and counts added."""
    out = ClusterResult(results[0].config, preemptions={"recompute": 0, "swap": 0},
                        per_replica=[0] * results[0].config.replicas)  # fmt: skip
    for r in results:
        out.ttft_s += r.ttft_s
        for k, v in r.preemptions.items():
            out.preemptions[k] = out.preemptions.get(k, 0) + v
        out.per_replica = [a + b for a, b in zip(out.per_replica, r.per_replica, strict=True)]
        out.unfinished += r.unfinished
        out.rejected += r.rejected
    return out
