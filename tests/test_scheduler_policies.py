"""Policy ordering and victim choice on hand-built streams (no KV needed)."""

from __future__ import annotations

import pytest

from scheduler.policies import work_class
from scheduler.registry import POLICIES, get_policy
from scheduler.stream import Stream


def mk(rid: str, seq: int, first: float, last: float, final: bool = False, n_in: int = 10,
       computed: int = 0, outputs: int = 0, final_s: float | None = None) -> Stream:
    s = Stream(rid, "append", seq, first)
    s.input_ids = list(range(n_in))
    s.first_chunk_s, s.last_chunk_s, s.final = first, last, final
    s.final_s = final_s if final_s is not None else (last if final else None)
    s.computed = computed
    s.outputs = [1] * outputs
    return s


@pytest.fixture
def streams() -> dict[str, Stream]:
    return {
        # partial, with work, old first chunk, recent last chunk, little computed
        "a": mk("a", 0, first=0.0, last=9.0, computed=2),
        # complete input, newer
        "b": mk("b", 1, first=5.0, last=6.0, final=True, computed=4),
        # partial, idle (all computed), first arrival 1.0
        "c": mk("c", 2, first=1.0, last=2.0, computed=10),
        # partial with work, newest first chunk, oldest-but-one last chunk, most computed
        "d": mk("d", 3, first=7.0, last=7.5, n_in=100, computed=60),
        # complete, decoding, oldest
        "e": mk("e", 4, first=0.5, last=8.0, final=True, computed=10, outputs=1),
    }


def order(name: str, streams: dict[str, Stream], now: float = 10.0) -> str:
    p = get_policy(name)
    return "".join(s.rid for s in sorted(streams.values(), key=lambda s: p.key(s, now)))


def test_work_classes(streams: dict[str, Stream]) -> None:
    assert [work_class(streams[r]) for r in "abcde"] == [1, 0, 2, 1, 0]
    assert streams["e"].pending == 1  # decode: the last output is still to compute


def test_default_is_engine_order(streams: dict[str, Stream]) -> None:
    assert order("default", streams) == "abcde"  # victim = lowest rank = newest (LIFO)


def test_fcfs_complete_first_then_first_arrival(streams: dict[str, Stream]) -> None:
    assert order("fcfs", streams) == "ebadc"


def test_lcas_ascending_longest_idle_first(streams: dict[str, Stream]) -> None:
    # complete: b (last 6.0) before e (8.0); partial with work: d (7.5) before a (9.0)
    assert order("lcas", streams) == "bedac"


def test_lcas_desc_most_recent_first(streams: dict[str, Stream]) -> None:
    assert order("lcas-desc", streams) == "ebadc"


def test_mcps_most_computed_first(streams: dict[str, Stream]) -> None:
    assert order("mcps", streams) == "ebdac"


def test_ours_serves_complete_by_final_time_and_parks_idle_last(
    streams: dict[str, Stream],
) -> None:
    got = order("ours", streams)
    assert got[:2] == "be"  # b's input became final at 6.0, e's at 8.0
    assert got[-1] == "c"


def test_registry_and_unknown_name() -> None:
    for name in ("default", "fcfs", "lcas", "lcas-desc", "mcps", "ours"):
        assert get_policy(name).name == name
    assert set(POLICIES) >= {"default", "fcfs", "lcas", "lcas-desc", "mcps", "ours"}
    with pytest.raises(ValueError, match="unknown policy"):
        get_policy("nope")


def test_ours_shortest_final_first_with_aging() -> None:
    from scheduler.ours import OursPolicy

    p = get_policy("ours")
    rate, age = OursPolicy.TOKENS_PER_S, OursPolicy.AGING
    big = mk("big", 0, first=0.0, last=10.0, final=True, n_in=int(rate))  # ~1 s of prefill
    small = mk("small", 1, first=1.0, last=10.0, final=True, n_in=100)
    assert p.key(small, 10.0) < p.key(big, 10.0)  # both just final: the short one first
    # aging: once ``big`` has waited (size_s / AGING) longer, it outranks a new short one
    later = 10.0 + 1.0 / age + 0.1
    small.final_s = later
    assert p.key(big, later) < p.key(small, later)
    # partial streams stay behind every complete one, whatever their size
    part = mk("part", 2, first=0.0, last=later, n_in=5)
    assert p.key(big, later) < p.key(part, later)


def test_ours_holds_only_young_partial_update_versions() -> None:
    from scheduler.ours import OursPolicy

    p = get_policy("ours")
    upd = mk("u", 0, first=0.0, last=5.0)
    upd.mode = "update"
    assert p.hold_until(upd, 5.0) == 5.0 + OursPolicy.HOLD_S
    app = mk("a", 1, first=0.0, last=5.0)
    assert p.hold_until(app, 5.0) is None  # append chunks are never wasted
