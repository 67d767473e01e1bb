"""Regression: streams sharing a prefix under a pool that fits one of them.

Four streams (two questions, append and update mode each, after a shared chat
template; the update stream's last version equals its append twin's input) open
with first chunks that overfill the pool, then get their remaining chunks in a
seeded random interleaving. Every stream must finish, for both preemption modes.

Before the fix this hung (the schedule stayed empty forever) in two ways:
a preempted stream kept its lock on the prefix it shared and was never a victim
again, so nobody could free that prefix; and per-stream ``held_tokens`` counts
nothing another stream also locks, so two parked twins holding one long prefix
looked like zero reclaimable memory to the plan and to victim choice.
"""

from __future__ import annotations

import random

import pytest

from eval.sim import make_kv
from scheduler.core import Scheduler
from scheduler.cost_model import CostModel
from scheduler.stream import SamplingParams

NEW = 3


def _cases(rng: random.Random) -> list[dict[str, list[list[int]]]]:
    def toks(n: int) -> list[int]:
        return [rng.randrange(5, 200) for _ in range(n)]

    head = toks(25)  # the chat template every prompt starts with
    out = []
    for _ in range(2):
        d = [toks(rng.randrange(25, 40)) for _ in range(3)]
        tail = toks(12)
        out.append({"append": [head + d[0], d[1], tail],
                    "update": [head + d[2] + d[0] + tail, head + d[0] + d[1] + tail]})  # fmt: skip
    return out


def _run(seed: int, preemption: str) -> tuple[set[str], Scheduler]:
    rng = random.Random(seed)
    cases = _cases(rng)
    pool = max(sum(len(p) for p in c["append"]) for c in cases) + 2 * NEW + 16
    kv = make_kv(pool, 1, host_capacity_tokens=4 * pool)
    s = Scheduler(kv, "fcfs", preemption, CostModel.load("cpu-reference"),  # type: ignore[arg-type]
                  token_budget=32, reuse_prefix=False)  # fmt: skip
    rest: dict[str, list[list[int]]] = {}
    now = 0.0
    for i, c in enumerate(cases):
        for mode in ("append", "update"):
            rid = f"{mode}{i}"
            s.open(rid, mode, now, SamplingParams(NEW))  # type: ignore[arg-type]
            s.add_chunk(rid, c[mode][0], False, now)
            rest[rid] = c[mode][1:]
    order = [rid for rid, pieces in rest.items() for _ in pieces]
    rng.shuffle(order)
    done: set[str] = set()
    idle = 0
    for _ in range(2000):
        now += 0.01
        if order and (s.stats[preemption] > 0 or idle > 2) and rng.random() < 0.5:
            rid = order.pop(0)
            piece = rest[rid].pop(0)
            s.add_chunk(rid, piece, not rest[rid], now)
        plan = s.schedule(now)
        ev = s.finish_step(plan, {it.rid: 7 for it in plan.items if it.sample}, now)
        kv.check()
        done |= {e.rid for e in ev if e.kind == "finished"}
        idle = 0 if plan.items else idle + 1
        if len(done) == 4 or (idle > 20 and not order):
            break
    return done, s


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_streams_sharing_a_prefix_all_finish_under_pressure(preemption: str) -> None:
    stuck = {}
    for seed in range(40):
        done, s = _run(seed, preemption)
        if len(done) < 4:
            stuck[seed] = {r: (x.computed, x.pending, x.preempted) for r, x in s.streams.items()}
    assert not stuck, stuck
