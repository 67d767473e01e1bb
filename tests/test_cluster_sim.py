"""eval/cluster_sim.py: routing policies over R simulated replicas."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from eval.cluster_sim import ClusterConfig, assign, simulate_cluster
from eval.sim import SimConfig, simulate
from eval.workloads import load_workload
from stream2llm.trace import Chunk, Query


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def q(i: int, t: float, sizes: list[int], gap: float = 1.0, new: int = 4) -> Query:
    chunks = tuple(Chunk(k * gap, tuple(range(1, n + 1)), final=k == len(sizes) - 1)
                   for k, n in enumerate(sizes))  # fmt: skip
    return Query(f"q{i}", t, "append", chunks, new)


def test_round_robin_and_random_shares():
    qs = [q(i, i * 0.1, [10]) for i in range(40)]
    assert Counter(assign(qs, ClusterConfig(4, "round_robin"), 0.01)) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert set(assign(qs, ClusterConfig(4, "random", seed=1), 0.01)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown routing policy"):
        assign(qs, ClusterConfig(2, "nope"), 0.01)


def test_least_kv_steers_around_a_hot_replica():
    qs = [q(i, i * 0.05, [50, 50, 50], gap=2.0) for i in range(200)]
    cfg = dict(hot_fraction=0.3, seed=3)
    rr = Counter(assign(qs, ClusterConfig(4, "round_robin", **cfg), 0.05))
    kv = Counter(assign(qs, ClusterConfig(4, "least_kv", **cfg), 0.05))
    assert kv[0] < rr[0]  # the pinned share is compensated: fewer others go there


def test_stream_aware_counts_what_open_streams_will_still_send():
    # replica 0 holds a stream that has sent 10 of its 1000 tokens; replica 1 holds a
    # finished request of 200 tokens. least_kv sees 10 < 200 and picks 0; stream_aware
    # expects ~990 more on 0 (mean final size 1000 learned from an earlier query) -> 1.
    learn = q(0, 0.0, [1000], new=1)
    open_ = q(1, 100.0, [10, 990], gap=50.0)
    done = q(2, 100.1, [200], new=10_000)
    probe = q(3, 101.0, [5])
    order = [learn, open_, done, probe]
    for policy, want in (("least_kv", 0), ("stream_aware", 1)):
        where = assign(order, ClusterConfig(2, policy, seed=0), tpot_s=0.01)
        assert where[1] != where[2]
        assert where[3] == (where[1] if want == 0 else where[2]), policy


def test_one_replica_is_the_plain_simulator():
    qs = load_workload("crawler", qps=4, num_queries=12, seed=0)
    sim = SimConfig(policy="fcfs", token_budget=2048)
    one = simulate(qs, sim)
    for policy in ("random", "stream_aware"):
        res = simulate_cluster(qs, ClusterConfig(1, policy, sim=sim))
        assert sorted(res.ttft_s) == sorted(one.ttft_s) and res.per_replica == [12]
