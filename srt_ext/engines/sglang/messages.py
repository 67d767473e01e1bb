"""Stream messages on SGLang's tokenizer -> scheduler channel, and their handlers.

The structs subclass SGLang's ``io_struct.BaseReq`` (tagged msgspec structs) and
are added to its IPC decoder with ``io_struct.hook_custom_types``, so they travel
over the same ZMQ PUSH/PULL socket as ``TokenizedGenerateReqInput``. Handlers
take the message and return an output struct (or None), the contract of the
``TypeBasedDispatcher`` that ``Scheduler.init_request_dispatcher`` builds;
``install_stream_handlers`` adds them to a scheduler's dispatcher.
"""

from __future__ import annotations

from array import array
from functools import partial
from typing import Any

import radix_stream._sglang  # noqa: F401

from sglang.srt.managers.io_struct import (
    AbortReq,
    BaseReq,
    TokenizedGenerateReqInput,
    hook_custom_types,
)
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.utils import TypeBasedDispatcher

from srt_ext.engines.sglang import kv
from srt_ext.engines.sglang.state import table
from stream2llm.lcp import common_prefix_len


# sglang ships no type information, so BaseReq is Any to mypy, which then checks the
# msgspec class keyword ``kw_only`` against object.__init_subclass__ and rejects it
# (a false positive: BaseReq is a msgspec.Struct). Hence the ignores below.
class StreamOpenReq(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    """Open a stream: its first chunk is an ordinary tokenized generate request."""

    mode: str = "append"  # "append" | "update"
    final: bool = False
    generate: TokenizedGenerateReqInput


class StreamChunkReq(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    """Append to (append mode) or replace (update mode) the stream's input."""

    input_ids: list[int]
    final: bool = False
    # append mode: keep this many tokens of the input before appending (None: all).
    # Text chunks are re-tokenized across the boundary; the changed tail is cut.
    keep: int | None = None
    # Only with the final chunk: replaces the parameters given at open (normalized
    # and verified by the tokenizer manager, as SGLang does for /generate).
    sampling_params: SamplingParams | None = None


class StreamAbortReq(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    """Abort the stream and free its KV (parked streams hold tree locks)."""


class StreamChunkOutput(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    input_tokens: int = 0
    cached_tokens: int = 0
    invalidated_tokens: int = 0
    error: str | None = None
    status: int = 200  # HTTP status the API side answers with when ``error`` is set


class StreamStatsReq(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    """Ask the scheduler for KV and stream counters (``GET /v1/stats``)."""


class StreamStatsOutput(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    stats: dict[str, int]


STREAM_TYPES = (StreamOpenReq, StreamChunkReq, StreamAbortReq, StreamChunkOutput,
                StreamStatsReq, StreamStatsOutput)


def register_message_types() -> None:
    """Teach SGLang's msgpack IPC decoder our structs (idempotent)."""
    hook_custom_types(*STREAM_TYPES)


def _find_req(scheduler: Any, rid: str) -> tuple[Any, str]:
    t = table()
    if rid in t.parked:
        return t.parked[rid], "parked"
    if rid in t.unsampled:  # admitted with partial input, its step not settled yet
        return t.unsampled[rid], "inflight"
    for req in scheduler.waiting_queue:
        if req.rid == rid:
            return req, "queued"
    chunked = getattr(scheduler, "chunked_req", None)
    if chunked is not None and chunked.rid == rid:
        return chunked, "inflight"
    running = getattr(scheduler, "running_batch", None)
    for req in getattr(running, "reqs", None) or []:
        if req.rid == rid:
            return req, "inflight"
    return None, "gone"


def handle_stream_open(scheduler: Any, msg: StreamOpenReq) -> StreamChunkOutput:
    t = table()
    rid = msg.generate.rid or msg.rid
    if rid in t.streams or _find_req(scheduler, rid)[0] is not None:
        return StreamChunkOutput(rid=rid, error=f"stream {rid} already exists", status=409)
    if msg.mode not in ("append", "update"):
        return StreamChunkOutput(rid=rid, error=f"unknown mode {msg.mode!r}", status=400)
    info = t.open(rid, msg.mode)  # type: ignore[arg-type]
    info.note_chunk(t.clock(), msg.final)
    scheduler.handle_generate_request(msg.generate)  # SGLang validates and queues
    info.req, _ = _find_req(scheduler, rid)
    if info.req is None:  # rejected by SGLang, which sent the abort to the tokenizer
        t.forget(rid)
        return StreamChunkOutput(rid=rid, error="rejected by the scheduler", status=400)
    return StreamChunkOutput(rid=rid, input_tokens=len(info.req.origin_input_ids))


def _next_version(mode: str, base: array, new: array, keep: int | None) -> array:
    """The whole input after a chunk: an update replaces it; an append extends it,
    after cutting it to ``keep`` tokens when the tokenizer side re-tokenized the
    text across the chunk boundary (the last tokens of the old text changed)."""
    if mode == "update":
        return new
    return (base if keep is None else base[:keep]) + new


def handle_stream_chunk(scheduler: Any, msg: StreamChunkReq) -> StreamChunkOutput:
    t = table()
    info = t.streams.get(msg.rid or "")
    if info is None or not info.is_stream:
        return StreamChunkOutput(rid=msg.rid, error="unknown stream", status=404)
    if info.final:
        return StreamChunkOutput(rid=msg.rid, error="chunk after the final chunk", status=409)
    req, where = _find_req(scheduler, info.rid)
    if req is None:
        return StreamChunkOutput(rid=msg.rid, error="stream is not live", status=410)
    tree = scheduler.tree_cache
    base = info.pending_input if info.pending_input is not None else req.origin_input_ids
    if msg.keep is not None and not 0 <= msg.keep <= len(base):
        return StreamChunkOutput(rid=msg.rid, status=400,
                                 error=f"keep={msg.keep} outside the input (0..{len(base)})")  # fmt: skip
    version = _next_version(info.mode, base, array("q", msg.input_ids), msg.keep)
    limit = getattr(scheduler, "max_req_input_len", None)
    if limit is not None and len(version) >= limit:
        return StreamChunkOutput(rid=msg.rid, status=400, error=(
            f"input length ({len(version)} tokens) exceeds the maximum allowed length ({limit} tokens)"))
    if msg.sampling_params is not None:
        req.sampling_params = msg.sampling_params  # not sampled yet: safe to replace
    invalidated = 0
    origin = req.origin_input_ids
    lcp = common_prefix_len(origin, version)
    if info.pending_input is None and lcp == len(origin):
        kv.set_input(req, version)  # a pure extension: safe even during a forward
    elif where == "inflight":
        info.pending_input = version  # the cut is applied when its step settles
    else:
        invalidated = kv.cut_to(tree, info, lcp)
        if info.host_tokens is not None and lcp < len(info.host_tokens):
            info.host_kv = info.host_tokens = None  # a swapped path past the cut: recompute
        kv.set_input(req, version)
    info.tokens_invalidated += invalidated
    t.tokens_invalidated += invalidated
    info.note_chunk(t.clock(), msg.final)
    if where == "parked":
        kv.unpark(t, info, req, scheduler.waiting_queue)
    cached = tree.depth(info.pin) if info.pin is not None else int(req.prefix_len or 0)
    if where == "inflight" and info.rid in t.unsampled and req.inflight_middle_chunks == 0:
        # its step ran and was processed (it is parked before the next one): the KV
        # of everything that step prefilled exists; SGLang set ``already_computed``
        cached = max(cached, int(req.already_computed))
    if info.host_tokens is not None:  # swapped out: computed, kept in host memory
        cached = max(cached, len(info.host_tokens))
    if info.pending_input is not None:  # the cut comes between steps; ack what will survive it
        cached = min(cached, common_prefix_len(req.origin_input_ids, info.pending_input))
    return StreamChunkOutput(
        rid=msg.rid,
        input_tokens=len(info.pending_input if info.pending_input is not None
                         else req.origin_input_ids),
        cached_tokens=cached,
        invalidated_tokens=invalidated,
    )


def handle_stream_abort(scheduler: Any, msg: StreamAbortReq) -> StreamChunkOutput:
    """Abort a stream wherever it is; the tokenizer side gets SGLang's usual
    abort output, so its waiter finishes with ``finish_reason.type == "abort"``."""
    t = table()
    rid = msg.rid or ""
    info = t.streams.get(rid)
    if info is None:
        return StreamChunkOutput(rid=rid, error="unknown stream", status=404)
    req, _ = _find_req(scheduler, rid)
    n = len(req.origin_input_ids) if req is not None else 0
    if rid in t.unsampled:  # in none of SGLang's queues: released once its step settles
        info.aborted = True
        return StreamChunkOutput(rid=rid, input_tokens=n)
    release_parked(scheduler, rid, "aborted by the client")
    if rid in t.streams:  # queued or in a forward: SGLang's own abort path
        t.forget(rid)
        kv.unpin(scheduler.tree_cache, info)
        scheduler.abort_request(AbortReq(rid=rid))
    return StreamChunkOutput(rid=rid, input_tokens=n)


def release_parked(scheduler: Any, rid: str, why: str) -> bool:
    """Drop a parked stream (out of SGLang's queues, so SGLang's abort cannot see
    it): release its pin and tell the tokenizer side it ended."""
    t = table()
    req = t.parked.get(rid)
    if req is None:
        return False
    info = t.forget(rid)
    if info is not None:
        kv.unpin(scheduler.tree_cache, info)
    reason = {"type": "abort", "message": why}
    scheduler.send_abort_output(AbortReq(rid=rid, finished_reason=reason), req)
    return True


def handle_stream_stats(scheduler: Any, msg: StreamStatsReq) -> StreamStatsOutput:
    """The integer keys of ``srt_ext.stats_schema.EngineStats`` (the HTTP side adds
    the rest: ``frontend.StreamFrontend.stats``); preemptions and swaps as executed."""
    t = table()
    tree, alloc = scheduler.tree_cache, scheduler.token_to_kv_pool_allocator
    cap = int(getattr(scheduler, "max_total_num_tokens", 0) or alloc.size)
    free = int(alloc.available_size())
    running = getattr(scheduler, "running_batch", None)
    context = getattr(getattr(scheduler, "model_config", None), "context_len", None)
    stats = {
        "kv_capacity_tokens": cap,
        "kv_free_tokens": free,
        "kv_used_tokens": cap - free,
        "kv_pinned_tokens": int(tree.protected_size()),
        "kv_evictable_tokens": int(tree.evictable_size()),
        "kv_host_tokens": sum(len(i.host_tokens) for i in t.streams.values()
                              if i.host_tokens is not None),  # fmt: skip
        "streams_open": len(t.streams),
        "streams_parked": len(t.parked),
        "requests_waiting": len(scheduler.waiting_queue),
        "requests_running": len(getattr(running, "reqs", None) or []),
        "tokens_invalidated": t.tokens_invalidated,
        "preemptions_recompute": t.decisions["recompute"],
        "preemptions_swap": t.decisions["swap"],
        "swap_out_tokens": t.swapped_out_tokens,
        "swap_in_tokens": t.swapped_in_tokens,
        "steps": int(getattr(scheduler, "forward_ct", 0) or 0),
        "max_context_tokens": int(context or getattr(scheduler, "max_req_len", 0) or 0),
    }
    return StreamStatsOutput(rid=msg.rid, stats=stats)


def install_stream_handlers(scheduler: Any) -> None:
    """Add the stream handlers to ``scheduler._request_dispatcher`` (idempotent)."""
    register_message_types()
    table().scheduler = scheduler
    handlers: list[tuple[type, Any]] = [
        (StreamOpenReq, partial(handle_stream_open, scheduler)),
        (StreamChunkReq, partial(handle_stream_chunk, scheduler)),
        (StreamAbortReq, partial(handle_stream_abort, scheduler)),
        (StreamStatsReq, partial(handle_stream_stats, scheduler)),
    ]
    scheduler._request_dispatcher += TypeBasedDispatcher(handlers)
