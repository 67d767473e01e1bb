"""register() puts our hooks on SGLang 0.5.23's real targets, and they apply."""

from __future__ import annotations

import pkgutil

import radix_stream._sglang  # noqa: F401

from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.mem_cache.registry import get_radix_cache_factory
from sglang.srt.plugins.hook_registry import HookRegistry

from srt_ext.engines.sglang import plugin
from srt_ext.engines.sglang.adder import StreamPrefillAdder
from srt_ext.engines.sglang.state import reset_table


def _final_reqs() -> list:
    """Three complete inputs: a long one complete for 30 s, two short new ones."""
    from array import array

    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    clock = iter([0.0, 0.0, 30.0, 30.0, 31.0, 31.0] + [40.0] * 100)
    t = reset_table(clock=lambda: next(clock))
    reqs = []
    for rid, n in (("long", 3000), ("a", 40), ("b", 40)):
        info = t.open(rid, "append")
        info.note_chunk(t.clock(), True)
        reqs.append(Req(rid, "", array("q", [1] * n), SamplingParams(max_new_tokens=4)))
    return reqs


def test_register_installs_hooks_on_real_targets() -> None:
    plugin.register()
    plugin.register()  # idempotent
    assert get_radix_cache_factory("stream2llm") is not None
    targets = {t for t, _, _ in plugin.hooks()}
    for t in targets:
        assert len(HookRegistry._hooks[t]) == 1, t
        pkgutil.resolve_name(t)  # exists in 0.5.23
    owners = {t: pkgutil.resolve_name(t.rsplit(".", 1)[0]) for t in targets}
    missing = object()
    saved = {t: owners[t].__dict__.get(t.rsplit(".", 1)[1], missing) for t in targets}
    from sglang.srt.runtime_context import _CONTEXT
    from sglang.srt.server_args import ServerArgs

    _CONTEXT.set_server_args(ServerArgs(model_path="dummy", device="cpu"))  # as a server does
    reqs = _final_reqs()
    sglang_order = ScheduleBatch._get_decode_retraction_order(reqs)
    try:
        for t in targets:
            HookRegistry._apply_target(t, HookRegistry._hooks[t])
        assert Scheduler.get_prefill_adder_class(object()) is StreamPrefillAdder
        assert isinstance(ScheduleBatch.__dict__["_get_decode_retraction_order"], staticmethod)
        # SGLang retracts the longest input first; through the hook, ours keeps it
        # (complete for 30 s) and retracts the newest
        assert sglang_order[-1] == 0
        assert ScheduleBatch._get_decode_retraction_order(reqs) == [0, 1, 2]
        assert Scheduler.__dict__["flush_cache"] is not saved[f"{plugin.SCHED}.flush_cache"]
    finally:  # leave SGLang's classes as other tests expect them
        for t, original in saved.items():
            name = t.rsplit(".", 1)[1]
            if original is missing:
                delattr(owners[t], name)
            else:
                setattr(owners[t], name, original)
            HookRegistry._hooks.pop(t, None)
            HookRegistry._patched.discard(t)
