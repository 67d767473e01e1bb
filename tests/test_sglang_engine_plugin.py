"""register() puts our hooks on SGLang 0.5.23's real targets, and they apply."""

from __future__ import annotations

import pkgutil

import radix_stream._sglang  # noqa: F401

from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.schedule_policy import SchedulePolicy
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.mem_cache.registry import get_radix_cache_factory
from sglang.srt.plugins.hook_registry import HookRegistry

from srt_ext.sglang_engine import plugin
from srt_ext.sglang_engine.adder import StreamPrefillAdder
from srt_ext.sglang_engine.retract import stream_retraction_order


def test_register_installs_hooks_on_real_targets() -> None:
    plugin.register()
    plugin.register()  # idempotent
    assert get_radix_cache_factory("stream2llm") is not None
    targets = {t for t, _, _ in plugin.hooks()}
    for t in targets:
        assert len(HookRegistry._hooks[t]) == 1, t
        pkgutil.resolve_name(t)  # exists in 0.5.23
    owners = {"Scheduler": Scheduler, "SchedulePolicy": SchedulePolicy,
              "ScheduleBatch": ScheduleBatch}
    saved = {t: owners[t.split(".")[-2]].__dict__[t.split(".")[-1]] for t in targets}
    try:
        for t in targets:
            HookRegistry._apply_target(t, HookRegistry._hooks[t])
        assert Scheduler.get_prefill_adder_class(object()) is StreamPrefillAdder
        assert isinstance(ScheduleBatch.__dict__["_get_decode_retraction_order"], staticmethod)
        assert ScheduleBatch._get_decode_retraction_order([]) == stream_retraction_order([])
    finally:  # leave SGLang's classes as other tests expect them
        for t, original in saved.items():
            setattr(owners[t.split(".")[-2]], t.split(".")[-1], original)
            HookRegistry._hooks.pop(t, None)
            HookRegistry._patched.discard(t)
