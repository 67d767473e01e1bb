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
from sglang.utils import TypeBasedDispatcher

from srt_ext.sglang_engine import kv
from srt_ext.sglang_engine.state import table


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


class StreamAbortReq(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    """Abort the stream and free its KV (parked streams hold tree locks)."""


class StreamChunkOutput(BaseReq, kw_only=True):  # type: ignore[call-arg]  # untyped sglang base
    input_tokens: int = 0
    cached_tokens: int = 0
    invalidated_tokens: int = 0
    error: str | None = None


STREAM_TYPES = (StreamOpenReq, StreamChunkReq, StreamAbortReq, StreamChunkOutput)


def register_message_types() -> None:
    """Teach SGLang's msgpack IPC decoder our structs (idempotent)."""
    hook_custom_types(*STREAM_TYPES)


def _find_req(scheduler: Any, rid: str) -> tuple[Any, str]:
    t = table()
    if rid in t.parked:
        return t.parked[rid], "parked"
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
    if rid in t.streams:
        return StreamChunkOutput(rid=rid, error="stream already open")
    if msg.mode not in ("append", "update"):
        return StreamChunkOutput(rid=rid, error=f"unknown mode {msg.mode!r}")
    info = t.open(rid, msg.mode)  # type: ignore[arg-type]
    info.note_chunk(t.clock(), msg.final)
    scheduler.handle_generate_request(msg.generate)  # SGLang validates and queues
    info.req, _ = _find_req(scheduler, rid)
    if info.req is None:  # rejected (aborted with an error output) by SGLang
        t.forget(rid)
        return StreamChunkOutput(rid=rid, error="rejected by the scheduler")
    return StreamChunkOutput(rid=rid, input_tokens=len(info.req.origin_input_ids))


def handle_stream_chunk(scheduler: Any, msg: StreamChunkReq) -> StreamChunkOutput:
    t = table()
    info = t.streams.get(msg.rid or "")
    if info is None or not info.is_stream:
        return StreamChunkOutput(rid=msg.rid, error="unknown stream")
    if info.final:
        return StreamChunkOutput(rid=msg.rid, error="chunk after the final chunk")
    req, where = _find_req(scheduler, info.rid)
    if req is None:
        return StreamChunkOutput(rid=msg.rid, error="stream is not live")
    tree = scheduler.tree_cache
    new = array("q", msg.input_ids)
    invalidated = 0
    if info.mode == "append":
        kv.set_input(req, req.origin_input_ids + new)
    elif where == "inflight":
        info.pending_input = new  # applied when the adder parks it between steps
    else:
        if info.pin is not None:
            invalidated = kv.cut_to(tree, info, kv.common_prefix(req.origin_input_ids, new))
        kv.set_input(req, new)
    info.tokens_invalidated += invalidated
    info.note_chunk(t.clock(), msg.final)
    if where == "parked":
        kv.unpark(t, info, req, scheduler.waiting_queue)
    cached = tree.depth(info.pin) if info.pin is not None else int(req.prefix_len or 0)
    return StreamChunkOutput(
        rid=msg.rid,
        input_tokens=len(info.pending_input if info.pending_input is not None
                         else req.origin_input_ids),
        cached_tokens=cached,
        invalidated_tokens=invalidated,
    )


def handle_stream_abort(scheduler: Any, msg: StreamAbortReq) -> None:
    t = table()
    rid = msg.rid or ""
    info = t.streams.get(rid)
    if info is not None:
        kv.unpin(scheduler.tree_cache, info)
    if rid in t.parked:  # out of SGLang's queues: nothing of it left there
        t.forget(rid)
        return None
    t.forget(rid)
    scheduler.abort_request(AbortReq(rid=rid))
    return None


def install_stream_handlers(scheduler: Any) -> None:
    """Add the stream handlers to ``scheduler._request_dispatcher`` (idempotent)."""
    register_message_types()
    table().scheduler = scheduler
    scheduler._request_dispatcher += TypeBasedDispatcher([
        (StreamOpenReq, partial(handle_stream_open, scheduler)),
        (StreamChunkReq, partial(handle_stream_chunk, scheduler)),
        (StreamAbortReq, partial(handle_stream_abort, scheduler)),
    ])
