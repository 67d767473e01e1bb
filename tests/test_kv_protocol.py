"""The KV seam: StreamKVCache (and the test fakes built on it) satisfy KVManager.

mypy checks the assignments below structurally; the isinstance checks are the
runtime half (``KVManager`` is ``runtime_checkable``: method names only).
"""

from __future__ import annotations

from kv_fakes import FakeKV

from eval.sim import make_kv
from radix_stream import StreamKVCache
from scheduler.core import Scheduler
from scheduler.kv_protocol import KVManager


def test_stream_kv_cache_is_a_kv_manager() -> None:
    kv: KVManager = StreamKVCache.create(64, page_size=4)
    fake: KVManager = FakeKV(64).kv
    sim: KVManager = make_kv(64, 1, None)
    for k in (kv, fake, sim):
        assert isinstance(k, KVManager)
    sched: Scheduler[StreamKVCache] = Scheduler(make_kv(64, 1, None), preemption="recompute")
    assert isinstance(sched.kv, KVManager)


def test_an_object_missing_a_kv_call_is_not_a_kv_manager() -> None:
    class NoReserveMany:
        page_size, capacity = 1, 64

    assert not isinstance(NoReserveMany(), KVManager)
