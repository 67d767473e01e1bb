"""Scheduler.reuse_prefix: a stream adopts KV another request already computed."""

from __future__ import annotations

from test_scheduler_core import drain, new, step

TEMPLATE = list(range(100, 140))


def test_second_stream_adopts_the_shared_prefix_and_computes_only_the_rest() -> None:
    s = new(cap=512)
    s.open("a", "append", 0.0)
    s.add_chunk("a", TEMPLATE + [1, 2, 3], True, 0.0)
    drain(s, 0.1)  # a finishes; its prompt stays cached in the tree
    s.open("b", "append", 0.2)
    s.add_chunk("b", TEMPLATE + [9, 9], False, 0.2)
    assert s.reuse_prefix("b") == len(TEMPLATE)
    plan, _ = step(s, 0.3)
    assert plan.num_tokens == {"b": 2} and plan.items[0].start == len(TEMPLATE)


def test_a_fully_cached_final_input_keeps_one_token_to_sample_from() -> None:
    s = new(cap=512)
    ids = TEMPLATE + [5, 6]
    s.open("a", "append", 0.0)
    s.add_chunk("a", ids, True, 0.0)
    drain(s, 0.1)
    s.open("b", "append", 0.2)
    s.add_chunk("b", ids, True, 0.2)
    assert s.reuse_prefix("b") == len(ids) - 1
    plan, events = step(s, 0.3)
    assert plan.num_tokens == {"b": 1} and plan.items[0].sample
    assert [e.kind for e in events] == ["first_token", "finished"]


def test_no_reuse_while_a_step_is_running() -> None:
    s = new(cap=512)
    s.open("a", "append", 0.0)
    s.add_chunk("a", TEMPLATE, False, 0.0)
    plan = s.schedule(0.1)
    assert s.reuse_prefix("a") == 0  # in flight: the step's slots are not touched
    s.finish_step(plan, {}, 0.1)
    s.kv.check()


def test_add_chunk_reuses_the_prefix_itself_unless_turned_off() -> None:
    for reuse in (True, False):
        s = new(cap=512)
        s.reuses_prefix = reuse
        s.open("a", "append", 0.0)
        s.add_chunk("a", TEMPLATE + [1, 2, 3], True, 0.0)
        drain(s, 0.1)
        s.open("b", "append", 0.2)
        res = s.add_chunk("b", TEMPLATE + [9, 9], False, 0.2)
        assert res.kept == s.get("b").computed == (len(TEMPLATE) if reuse else 0)
