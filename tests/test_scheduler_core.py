"""The two-phase step against the real StreamKVCache (counting pool)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.sim import make_kv
from scheduler.core import Scheduler
from scheduler.cost_model import CostModel
from scheduler.stream import (
    ChunkAfterFinal,
    OutOfOrderChunk,
    SamplingParams,
    StreamError,
    StreamState,
    UnknownStream,
)


def new(cap: int = 256, page: int = 1, policy: str = "fcfs", preemption: str = "recompute",
        budget: int = 64) -> Scheduler:
    kv = make_kv(cap, page, host_capacity_tokens=4 * cap)
    return Scheduler(kv, policy=policy, preemption=preemption,  # type: ignore[arg-type]
                     cost_model=CostModel.load("cpu-reference"), token_budget=budget,
                     reuse_prefix=False)


def step(s: Scheduler, now: float, tok: int = 7):
    plan = s.schedule(now)
    events = s.finish_step(plan, {it.rid: tok for it in plan.items if it.sample}, now)
    s.kv.check()
    return plan, events


def drain(s: Scheduler, now: float, limit: int = 50) -> list:
    out = []
    for _ in range(limit):
        plan, ev = step(s, now)
        out += ev
        if not plan.items:
            break
    return out


def test_append_partial_prefill_samples_nothing_until_final() -> None:
    s = new()
    s.open("r", "append", 0.0)
    s.add_chunk("r", list(range(10)), False, 0.0)
    plan, ev = step(s, 0.1)
    assert plan.num_tokens == {"r": 10} and not plan.items[0].sample and ev == []
    assert s.get("r").state is StreamState.WAITING_INPUT  # pinned, waiting for input
    assert s.kv.computed("r") == 10 and s.kv.is_resident("r")
    s.add_chunk("r", [50, 51], True, 0.2)
    plan, ev = step(s, 0.3)
    assert plan.items[0].start == 10 and plan.items[0].token_ids == [50, 51]
    assert plan.items[0].sample
    assert [e.kind for e in ev] == ["first_token", "finished"]
    assert "r" not in s.streams


def test_final_chunk_during_step_never_samples_early() -> None:
    s = new()
    s.open("r", "append", 0.0)
    s.add_chunk("r", list(range(8)), False, 0.0)
    plan = s.schedule(0.0)
    assert not plan.items[0].sample
    s.add_chunk("r", [99], True, 0.05)  # arrives mid-step
    ev = s.finish_step(plan, {}, 0.1)
    assert ev == [] and s.get("r").outputs == []
    plan, ev = step(s, 0.2)
    assert plan.items[0].token_ids == [99] and plan.items[0].sample
    assert ev[0].kind == "first_token" and ev[0].t == 0.2


def test_identical_final_update_recomputes_last_token_to_sample() -> None:
    s = new()
    s.open("r", "update", 0.0)
    s.add_chunk("r", list(range(12)), False, 0.0)
    step(s, 0.1)
    res = s.add_chunk("r", list(range(12)), True, 0.2)
    assert (res.kept, res.invalidated) == (12, 0)
    plan, ev = step(s, 0.3)
    assert plan.items[0].start == 11 and plan.items[0].sample and ev[0].kind == "first_token"


def test_update_mode_cuts_to_lcp_and_counts_invalidated() -> None:
    s = new()
    s.open("r", "update", 0.0)
    s.add_chunk("r", list(range(20)), False, 0.0)
    step(s, 0.1)
    res = s.add_chunk("r", list(range(8)) + [100, 101, 102], False, 0.2)
    assert (res.kept, res.invalidated) == (8, 12)
    assert s.kv.computed("r") == 8 and s.stats["tokens_invalidated"] == 12
    plan, _ = step(s, 0.3)
    assert plan.items[0].start == 8 and plan.items[0].token_ids == [100, 101, 102]


def test_update_during_step_is_deferred_to_commit() -> None:
    s = new()
    s.open("r", "update", 0.0)
    s.add_chunk("r", list(range(10)), False, 0.0)
    plan = s.schedule(0.0)
    res = s.add_chunk("r", list(range(4)) + [77] * 6, True, 0.05)
    assert res.deferred and (res.kept, res.invalidated) == (4, 6)
    s.finish_step(plan, {}, 0.1)
    assert s.kv.computed("r") == 4
    plan, ev = step(s, 0.2)
    assert plan.items[0].token_ids == [77] * 6 and plan.items[0].sample and ev


def test_decode_until_max_new_tokens_or_eos() -> None:
    s = new()
    s.open("a", "append", 0.0, SamplingParams(max_new_tokens=3))
    s.open("b", "append", 0.0, SamplingParams(max_new_tokens=10, eos_token_id=5))
    s.add_chunk("a", [1, 2, 3], True, 0.0)
    s.add_chunk("b", [1, 2], True, 0.0)
    plan, _ = step(s, 0.1, tok=4)
    assert all(it.sample for it in plan.items)
    plan, _ = step(s, 0.2, tok=4)
    assert {it.rid: (it.start, it.decode) for it in plan.items} == {"a": (3, True), "b": (2, True)}
    _, ev = step(s, 0.3, tok=5)  # a reaches 3 tokens, b hits EOS
    assert {e.rid for e in ev if e.kind == "finished"} == {"a", "b"} and not s.streams


def test_typed_errors() -> None:
    s = new()
    with pytest.raises(UnknownStream):
        s.add_chunk("x", [1], False, 0.0)
    s.open("r", "append", 0.0)
    s.add_chunk("r", [1], False, 1.0, index=0)
    with pytest.raises(OutOfOrderChunk):
        s.add_chunk("r", [2], False, 1.1, index=2)
    with pytest.raises(OutOfOrderChunk):
        s.add_chunk("r", [2], False, 0.5)
    s.add_chunk("r", [2], True, 1.2, index=1)
    with pytest.raises(ChunkAfterFinal):
        s.add_chunk("r", [3], False, 1.3)
    with pytest.raises(StreamError):
        s.open("r", "append", 2.0)
    plan = s.schedule(2.0)
    with pytest.raises(StreamError):
        s.schedule(2.0)
    s.finish_step(plan, {"r": 1}, 2.1)


def test_abort_in_flight_waits_for_commit() -> None:
    s = new()
    s.open("r", "append", 0.0)
    s.add_chunk("r", list(range(10)), False, 0.0)
    plan = s.schedule(0.0)
    assert s.abort("r") == []
    ev = s.finish_step(plan, {}, 0.1)
    assert [e.kind for e in ev] == ["aborted"] and "r" not in s.streams
    assert s.kv.stats().free == s.kv.capacity  # aborted: nothing kept
    s.kv.check()


def _fill(s: Scheduler, rid: str, n: int, now: float, base: int, final: bool = False) -> None:
    s.open(rid, "append", now)
    s.add_chunk(rid, list(range(base, base + n)), final, now)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
@pytest.mark.parametrize("page", [1, 4])
def test_preemption_round_trip_keeps_exactly_the_cached_tokens(mode: str, page: int) -> None:
    s = new(cap=64, page=page, preemption=mode, budget=64)
    _fill(s, "old", 40, 0.0, base=1000)
    step(s, 0.0)  # old: 40 tokens cached, partial, waiting
    before = s.kv.token_ids("old")
    _fill(s, "new", 40, 1.0, base=2000, final=True)  # complete: outranks old (fcfs)
    plan, ev = step(s, 1.0)
    assert [p.rid for p in plan.preempted] == ["old"] and plan.preempted[0].kind == mode
    assert ev[0].rid == "new"
    st = s.get("old").state
    assert st is (StreamState.PREEMPTED_SWAP if mode == "swap" else StreamState.PREEMPTED_RECOMPUTE)
    s.add_chunk("old", [5, 6], True, 2.0)
    plan, ev = step(s, 2.0)
    item = plan.items[0]
    if mode == "swap":
        assert plan.swapped_in == [("old", 40)] and item.start == 40
    else:
        assert plan.swapped_in == [] and item.start == 0
        assert item.token_ids[:40] == before
    assert item.token_ids[-2:] == [5, 6] and item.sample and ev[0].kind == "first_token"


def test_default_policy_cannot_evict_an_older_partial_for_a_newer_final() -> None:
    s = new(cap=64, policy="default", budget=64)
    _fill(s, "old", 40, 0.0, base=1000)
    step(s, 0.0)
    _fill(s, "new", 40, 1.0, base=2000, final=True)
    plan, ev = step(s, 1.0)
    assert plan.preempted == [] and ev == []  # the final one waits: the paper's pathology
    assert s.get("new").computed < 40


def test_planning_mutates_nothing() -> None:
    s = new(cap=64, budget=32)
    _fill(s, "a", 30, 0.0, base=0)
    step(s, 0.0)
    _fill(s, "b", 30, 0.5, base=100)
    _fill(s, "c", 30, 0.6, base=200, final=True)
    snap_kv = s.kv.stats()
    snap = copy.deepcopy({r: (x.computed, x.state, x.in_flight) for r, x in s.streams.items()})
    order = sorted(s.streams.values(), key=lambda x: s.policy.key(x, 1.0))
    chosen = s.plan(order)
    assert chosen and s.kv.stats() == snap_kv
    assert {r: (x.computed, x.state, x.in_flight) for r, x in s.streams.items()} == snap


# ---- property: random traffic keeps every invariant ------------------------------------
ops = st.lists(
    st.tuples(st.sampled_from(["open", "chunk", "final", "step", "abort"]),
              st.integers(0, 5), st.integers(1, 24)),
    min_size=5, max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, policy=st.sampled_from(["default", "fcfs", "lcas", "mcps", "ours"]),
       preemption=st.sampled_from(["recompute", "swap", "cost"]),
       mode=st.sampled_from(["append", "update"]), page=st.sampled_from([1, 4]))
def test_random_traffic_invariants(ops, policy, preemption, mode, page) -> None:
    s = new(cap=96, page=page, policy=policy, preemption=preemption, budget=32)
    now = 0.0
    finals: dict[str, float] = {}
    for op, i, n in ops:
        now += 0.01
        rid = f"r{i}"
        live = rid in s.streams
        if op == "open" and not live:
            s.open(rid, mode, now)
        elif op in ("chunk", "final") and live and not s.streams[rid].final:
            x = s.streams[rid]
            ids = [i * 100 + k for k in range(n)]
            if mode == "update":
                ids = x.input_ids[: n // 2] + ids
            s.add_chunk(rid, ids, op == "final", now)
            if op == "final":
                finals[rid] = now
        elif op == "abort" and live:
            s.abort(rid)
        elif op == "step":
            order = sorted(s.streams.values(), key=lambda x: s.policy.key(x, now))
            chosen = s.plan(order)
            plan = s.schedule(now)
            got = {it.rid for it in plan.items}
            for x, _ in chosen:  # every planned stream acquired, or no victim was left
                if x.rid not in got:
                    r = order.index(x)
                    assert not [v for v in order[r + 1:] if v.rid not in got and not v.preempted
                                and s.kv.held_tokens(v.rid) > 0]
            for it in plan.items:
                assert it.token_ids == s.streams[it.rid].tokens(it.start, it.num_tokens)
                if it.sample:
                    assert s.streams[it.rid].final  # no output before final
            ev = s.finish_step(plan, {it.rid: 3 for it in plan.items if it.sample}, now)
            for e in ev:
                if e.kind == "first_token":
                    assert e.rid in finals and finals[e.rid] <= now
            for x in s.streams.values():
                if not x.preempted:
                    assert s.kv.token_ids(x.rid) == (x.input_ids + x.outputs)[: x.computed]
        s.kv.check()


def test_held_update_version_waits_behind_other_work_and_retry_at_says_until_when() -> None:
    from scheduler.ours import OursPolicy
    from scheduler.stream import SamplingParams

    hold = OursPolicy.HOLD_S
    s = new(cap=2048, policy="ours", budget=1024)
    s.open("f", "append", 0.0, SamplingParams(max_new_tokens=20))  # other work: decode goes on
    s.add_chunk("f", list(range(100, 700)), True, 0.0)
    s.open("u", "update", 0.0)
    s.add_chunk("u", list(range(40)), False, 0.0)
    plan, _ = step(s, 0.0)
    assert plan.num_tokens == {"f": 600} and plan.retry_at == pytest.approx(hold)  # young: held
    s.add_chunk("u", list(range(20)) + [99] * 20, False, 0.5 * hold)  # replaced: hold restarts
    plan, _ = step(s, hold)
    assert plan.num_tokens == {"f": 1} and plan.retry_at == pytest.approx(1.5 * hold)
    plan, _ = step(s, 1.5 * hold)  # stable long enough: prefilled
    assert plan.num_tokens == {"f": 1, "u": min(40, OursPolicy.partial_step_tokens or 40)}
    s.add_chunk("u", list(range(20)) + [98] * 10, True, 2 * hold)  # a final input: never held
    plan, _ = step(s, 2 * hold)
    assert plan.num_tokens == {"f": 1, "u": 10}  # kept the 20-token LCP, sampled at once
    assert all(it.sample for it in plan.items)


def test_a_hold_never_idles_the_engine() -> None:
    """Work-conserving: a young version alone runs now (in the capped slice), since
    holding it would only leave the engine idle; retry_at still says when it matures."""
    from scheduler.ours import OursPolicy

    s = new(cap=1024, policy="ours", budget=512)
    s.open("u", "update", 0.0)
    s.add_chunk("u", list(range(40)), False, 0.0)
    plan, _ = step(s, 0.0)
    assert plan.num_tokens == {"u": min(40, OursPolicy.partial_step_tokens or 40)}
    assert not any(it.sample for it in plan.items)  # still partial: nothing is sampled


def test_partial_prefill_per_step_is_capped_but_final_work_is_not(monkeypatch) -> None:
    from scheduler.ours import OursPolicy

    monkeypatch.setattr(OursPolicy, "partial_step_tokens", 16)
    s = new(cap=1024, policy="ours", budget=512)
    for r in "ab":  # partial update-mode versions, older than the hold
        s.open(r, "update", 0.0)
        s.add_chunk(r, list(range(40)), False, 0.0)
    s.open("f", "append", 0.0)
    s.add_chunk("f", list(range(100, 200)), True, 0.0)
    t = 2 * OursPolicy.HOLD_S
    plan, _ = step(s, t)
    assert plan.num_tokens == {"f": 100, "a": 16}  # partial work shares 16 tokens
    # append-mode partial prefill is never wasted: ours does not cap it
    s.open("c", "append", t)
    s.add_chunk("c", list(range(300, 400)), False, t)
    plan, _ = step(s, t)
    assert plan.num_tokens["c"] == 100 and sum(
        n for r, n in plan.num_tokens.items() if r in "ab") <= 16
