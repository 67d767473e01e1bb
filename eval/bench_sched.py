"""Scheduling decision time: ``schedule()`` wall time at N live streams.

    python -m eval.bench_sched [--streams 50,500,5000] [--steps 300] [--policy fcfs]

Each live stream has a partial input fully prefilled and waits for its next chunk
(pinned, the paper's memory-holding state); every step a few of them (``--active``)
receive a chunk and a few become final, so each schedule() sees real work. The
KV pool is large enough that no one is preempted (the paper's microbenchmark
times sorting; preemption paths are exercised by the simulator). Reports the mean
and P50/P99 of schedule() alone, not finish_step().
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def bench(n_streams: int, steps: int, policy: str, active: int, budget: int) -> dict[str, float]:
    from eval.sim import make_kv
    from scheduler.core import Scheduler
    from scheduler.cost_model import CostModel

    kv = make_kv(n_streams * 64 + 1 << 16, 16, None)
    sched = Scheduler(kv, policy=policy, preemption="cost",
                      cost_model=CostModel.load("h200-tp2-llama3-8b"), token_budget=budget,
                      reuse_prefix=False)
    rng = np.random.default_rng(0)
    now = 0.0
    for i in range(n_streams):
        sched.open(f"r{i}", "append", now)
        sched.add_chunk(f"r{i}", [i * 64 + k for k in range(32)], False, now)
    while sched._work:  # prefill everyone once: all pinned and waiting
        plan = sched.schedule(now)
        sched.finish_step(plan, {}, now)
    times, decide, acquire = [], [], []
    nxt = n_streams
    n_items = 0
    for _ in range(steps):
        now += 0.01
        for rid in rng.choice(list(sched.streams), size=min(active, len(sched.streams)),
                              replace=False):
            x = sched.streams[rid]
            if not x.final:
                sched.add_chunk(rid, [7] * 16, bool(rng.random() < 0.2), now)
        t0 = time.perf_counter()
        plan = sched.schedule(now)
        times.append(time.perf_counter() - t0)
        decide.append(sched.last_decision_s)
        acquire.append(sched.last_acquire_s)
        n_items += len(plan.items)
        sched.finish_step(plan, {it.rid: 1 for it in plan.items if it.sample}, now)
        while len(sched.streams) < n_streams:  # keep the population constant
            rid = f"r{nxt}"
            nxt += 1
            sched.open(rid, "append", now)
            sched.add_chunk(rid, [nxt % 50000] * 32, False, now)
    out: dict[str, float] = {"streams": n_streams, "items": n_items / steps}
    for name, xs in (("", times), ("decide_", decide), ("acquire_", acquire)):
        us = np.array(xs) * 1e6
        out[f"{name}mean_us"] = float(us.mean())
        out[f"{name}p50_us"] = float(np.median(us))
        out[f"{name}p99_us"] = float(np.percentile(us, 99))
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="50,500,5000")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--policy", default="fcfs")
    ap.add_argument("--active", type=int, default=8, help="streams receiving a chunk per step")
    ap.add_argument("--token-budget", type=int, default=2048)
    a = ap.parse_args()
    print(f"policy={a.policy} active={a.active} budget={a.token_budget}")
    print("decide = policy ordering + plan walk; acquire = KV resume/reserve (allocator);")
    print("schedule = the whole schedule() call. Each: mean / P50 / P99 in us")
    print(f"{'streams':>8} {'decide':>22} {'acquire':>22} {'schedule':>22} {'items':>6}")
    for n in (int(x) for x in a.streams.split(",")):
        r = bench(n, a.steps, a.policy, a.active, a.token_budget)
        cols = [" / ".join(f"{r[f'{k}{s}_us']:.1f}" for s in ("mean", "p50", "p99"))
                for k in ("decide_", "acquire_", "")]
        print(f"{n:>8} {cols[0]:>22} {cols[1]:>22} {cols[2]:>22} {r['items']:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
