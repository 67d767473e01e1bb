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
                      cost_model=CostModel.load("h200-tp2-llama3-8b"), token_budget=budget)
    rng = np.random.default_rng(0)
    now = 0.0
    for i in range(n_streams):
        sched.open(f"r{i}", "append", now)
        sched.add_chunk(f"r{i}", [i * 64 + k for k in range(32)], False, now)
    while sched._work:  # prefill everyone once: all pinned and waiting
        plan = sched.schedule(now)
        sched.finish_step(plan, {}, now)
    times, decide = [], []
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
        n_items += len(plan.items)
        sched.finish_step(plan, {it.rid: 1 for it in plan.items if it.sample}, now)
        while len(sched.streams) < n_streams:  # keep the population constant
            rid = f"r{nxt}"
            nxt += 1
            sched.open(rid, "append", now)
            sched.add_chunk(rid, [nxt % 50000] * 32, False, now)
    us, du = np.array(times) * 1e6, np.array(decide) * 1e6
    return {"streams": n_streams, "mean_us": float(us.mean()), "p50_us": float(np.median(us)),
            "p99_us": float(np.percentile(us, 99)), "decide_mean_us": float(du.mean()),
            "decide_p50_us": float(np.median(du)), "decide_p99_us": float(np.percentile(du, 99)),
            "items": n_items / steps}


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
    print("decide = policy ordering + plan walk; schedule = decide + KV resume/reserve")
    print(f"{'streams':>8} {'decide_mean':>12} {'decide_p50':>11} {'decide_p99':>11} "
          f"{'sched_mean':>11} {'sched_p50':>10} {'sched_p99':>10} {'items':>6}   (us)")
    for n in (int(x) for x in a.streams.split(",")):
        r = bench(n, a.steps, a.policy, a.active, a.token_budget)
        print(f"{n:>8} {r['decide_mean_us']:>12.1f} {r['decide_p50_us']:>11.1f} "
              f"{r['decide_p99_us']:>11.1f} {r['mean_us']:>11.1f} {r['p50_us']:>10.1f} "
              f"{r['p99_us']:>10.1f} {r['items']:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
