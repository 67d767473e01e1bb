"""Entry point: wire stream2llm into SGLang's scheduler through ``HookRegistry``.

SGLang's ``load_plugins()`` runs every ``sglang.srt.plugins`` entry point in each
process and then ``HookRegistry.apply_hooks()``. ``register`` adds the radix-cache
backend (``--radix-cache-backend stream2llm``) and these hooks:

* AFTER  ``Scheduler.init_request_dispatcher``: add the stream message handlers.
* REPLACE ``Scheduler.get_prefill_adder_class``: ``StreamPrefillAdder``.
* AROUND ``Scheduler.get_next_batch_to_run``: partial streams leave the batch and
  are parked, idle streams give way under memory pressure (``steps``).
* AFTER  ``SchedulePolicy.calc_priority``: re-sort the waiting queue by our policy.
* REPLACE ``ScheduleBatch._get_decode_retraction_order``: our victim order.
* AROUND ``ScheduleBatch.retract_decode``: count recompute/swap decisions.
* AROUND ``SchedulerOutputStreamer.stream_output`` (partial rows send nothing);
  AFTER ``Scheduler.send_abort_output``,
  ``Scheduler.abort_request``; AROUND ``Scheduler.flush_cache``: a stream's
  entry ends with its request, parked streams are abortable and never flushed
  (``lifecycle``).
* AFTER  ``TokenizerManager.init_request_dispatcher`` (the HTTP process): the
  ``/v1/streams`` routes on SGLang's FastAPI app and the reply handler
  (``frontend``).

``disagg.backend.register`` adds ``--disaggregation-transfer-backend zmq`` (SGLang's
PD KV manager on our ZMQ transfer engine) and the PD pieces of streams.

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
STREAMER = "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
TOKENIZER = "sglang.srt.managers.tokenizer_manager.TokenizerManager"


def _after_init_dispatcher(result: Any, scheduler: Any, *a: Any, **k: Any) -> Any:
    from srt_ext.engines.sglang.messages import install_stream_handlers

    install_stream_handlers(scheduler)
    # one line in SGLang's log proves our hooks ran in the scheduler process
    logger.info("stream2llm: hooks applied, stream handlers installed in the scheduler")
    return result


def hooks() -> list[tuple[str, Callable, str]]:
    """(target, hook, HookType name) for everything we install."""
    from srt_ext.engines.sglang import lifecycle
    from srt_ext.engines.sglang.adder import calc_priority_after, get_prefill_adder_class
    from srt_ext.engines.sglang.frontend import tokenizer_dispatcher_after
    from srt_ext.engines.sglang.retract import retract_decode_around, stream_retraction_order
    from srt_ext.engines.sglang.steps import next_batch_around

    return [
        (f"{SCHED}.init_request_dispatcher", _after_init_dispatcher, "AFTER"),
        (f"{SCHED}.get_prefill_adder_class", get_prefill_adder_class, "REPLACE"),
        (f"{SCHED}.get_next_batch_to_run", next_batch_around, "AROUND"),
        (f"{POLICY}.calc_priority", calc_priority_after, "AFTER"),
        (f"{BATCH}._get_decode_retraction_order", stream_retraction_order, "REPLACE"),
        (f"{BATCH}.retract_decode", retract_decode_around, "AROUND"),
        (f"{STREAMER}.stream_output", lifecycle.stream_output_around, "AROUND"),
        (f"{SCHED}.send_abort_output", lifecycle.send_abort_output_after, "AFTER"),
        (f"{SCHED}.abort_request", lifecycle.abort_request_after, "AFTER"),
        (f"{SCHED}.flush_cache", lifecycle.flush_cache_around, "AROUND"),
        (f"{TOKENIZER}.init_request_dispatcher", tokenizer_dispatcher_after, "AFTER"),
    ]


def register() -> None:
    """``sglang.srt.plugins`` entry point."""
    import radix_stream._sglang  # noqa: F401

    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from radix_stream.sglang_plugin import register as register_backend
    from srt_ext.engines.sglang.messages import register_message_types

    register_backend()
    register_message_types()
    # --disaggregation-transfer-backend zmq (prefill/decode KV over ZMQ, CPU-capable)
    from srt_ext.engines.sglang.disagg.backend import register as register_zmq_backend

    register_zmq_backend()
    for target, hook, kind in hooks():
        if any(h is hook for _, h, _ in HookRegistry._hooks.get(target, [])):
            continue
        HookRegistry.register(target, hook, HookType[kind])
