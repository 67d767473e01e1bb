"""Entry point: wire stream2llm into SGLang's scheduler through ``HookRegistry``.

SGLang's ``load_plugins()`` runs every ``sglang.srt.plugins`` entry point in each
process and then ``HookRegistry.apply_hooks()``. ``register`` adds the radix-cache
backend (``--radix-cache-backend stream2llm``) and these hooks:

* AFTER  ``Scheduler.init_request_dispatcher``: add the stream message handlers.
* REPLACE ``Scheduler.get_prefill_adder_class``: ``StreamPrefillAdder``.
* AFTER  ``SchedulePolicy.calc_priority``: re-sort the waiting queue by our policy.
* REPLACE ``ScheduleBatch._get_decode_retraction_order``: our victim order.
* AROUND ``ScheduleBatch.retract_decode``: count recompute/swap decisions.

Registration is idempotent (SGLang may load plugins more than once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

SCHED = "sglang.srt.managers.scheduler.Scheduler"
POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"


def _after_init_dispatcher(result: Any, scheduler: Any, *a: Any, **k: Any) -> Any:
    from srt_ext.sglang_engine.messages import install_stream_handlers

    install_stream_handlers(scheduler)
    # one line in SGLang's log proves our hooks ran in the scheduler process
    logger.info("stream2llm: hooks applied, stream handlers installed in the scheduler")
    return result


def hooks() -> list[tuple[str, Callable, str]]:
    """(target, hook, HookType name) for everything we install."""
    from srt_ext.sglang_engine.adder import calc_priority_after, get_prefill_adder_class
    from srt_ext.sglang_engine.retract import retract_decode_around, stream_retraction_order

    return [
        (f"{SCHED}.init_request_dispatcher", _after_init_dispatcher, "AFTER"),
        (f"{SCHED}.get_prefill_adder_class", get_prefill_adder_class, "REPLACE"),
        (f"{POLICY}.calc_priority", calc_priority_after, "AFTER"),
        (f"{BATCH}._get_decode_retraction_order", stream_retraction_order, "REPLACE"),
        (f"{BATCH}.retract_decode", retract_decode_around, "AROUND"),
    ]


def register() -> None:
    """``sglang.srt.plugins`` entry point."""
    import radix_stream._sglang  # noqa: F401

    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from radix_stream.sglang_plugin import register as register_backend
    from srt_ext.sglang_engine.messages import register_message_types

    register_backend()
    register_message_types()
    for target, hook, kind in hooks():
        if any(h is hook for _, h, _ in HookRegistry._hooks.get(target, [])):
            continue
        HookRegistry.register(target, hook, HookType[kind])
