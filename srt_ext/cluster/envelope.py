"""Stream operations carried on SGLang's ``/generate`` route (the replica side).

Why: sglang-router forwards only SGLang's own routes (``/generate``, the OpenAI
ones); ``/v1/streams/...`` gets a 404 from it. Its ``/generate`` body is parsed
into SGLang's typed request and re-serialized, so unknown fields are dropped,
but ``session_params`` (a free-form map, SGLang's "continue this session"
field) is forwarded untouched. A stream operation therefore rides in
``session_params["stream2llm"]``, its chunk in ``text``/``input_ids`` (the
router insists on exactly one of them, so an op without input sends
``text: ""`` with ``has_input: false``), and the router's ``manual`` policy
keeps every operation of one stream on one replica through the
``X-SMG-Routing-Key`` header (the gateway sets it to the stream id).

Two things the router cannot know are settled here:

- **Where the KV is.** An ``open`` reply names this process (``replica``, a
  random id per process start). Later operations carry it back as ``origin``;
  a replica that gets an operation for a stream opened elsewhere (the router
  moved the key because the owner died, or the owner restarted) answers 410
  with the reason instead of a 404, so a stream is never silently continued on
  a replica that lacks its KV.
- **How loaded a replica is.** ``min_load`` assignment counts the requests the
  router has in flight per worker. A stream is mostly idle between chunks, so
  an ``open`` with ``lease: true`` answers as server-sent events: the ack first,
  then nothing until the stream ends. While that response is open the router
  counts the stream against its replica, so "least loaded" means "fewest open
  streams" (plus one-shot requests in flight).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from srt_ext.api.limits import client_key
from srt_ext.api.models import (
    ChunkRequest,
    GenerateRequest,
    OpenStreamRequest,
    SamplingParamsModel,
)
from srt_ext.api.req_state import WorkerError

ENVELOPE = "stream2llm"  # the key in session_params


class StreamOp(BaseModel):
    """One stream operation (the REST route it stands for is in the comment)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["open", "chunk", "result", "abort"]  # POST /v1/streams, .../chunks, GET, DELETE
    rid: str | None = Field(default=None, min_length=1, max_length=128)
    origin: str | None = None  # the replica that opened it (from the open reply)
    has_input: bool = True  # False: text/input_ids only satisfy the router
    mode: Literal["append", "update"] | None = None
    final: bool = False
    sampling_params: SamplingParamsModel | None = None
    lease: bool = False  # open: hold the response open until the stream ends


def stream_op(body: GenerateRequest) -> StreamOp | None:
    """The stream operation a /generate body carries (None: a plain one-shot)."""
    raw = (body.session_params or {}).get(ENVELOPE)
    return None if raw is None else StreamOp.model_validate(raw)


def _content(body: GenerateRequest, op: StreamOp) -> dict[str, Any]:
    if not op.has_input:
        return {}
    return {"text": body.text} if body.input_ids is None else {"input_ids": body.input_ids}


def _ack(rid: str, ack: Any, instance: str) -> dict[str, Any]:
    return {"rid": rid, "input_tokens": ack.input_tokens, "cached_tokens": ack.cached_tokens,
            "invalidated_tokens": ack.invalidated_tokens, "replica": instance}  # fmt: skip


def check_origin(op: StreamOp, states: Any, instance: str) -> None:
    """410 when the stream was opened on another replica process (see module doc)."""
    if op.origin and op.origin != instance and op.rid not in states:
        raise WorkerError(410, f"stream {op.rid} was opened on replica {op.origin}, not on "
                               f"this one ({instance}), and its KV cannot move: that replica "
                               "died or restarted, or the router lost its key; open a new "
                               "stream")  # fmt: skip


async def handle_stream_op(op: StreamOp, body: GenerateRequest, request: Request, s: Any) -> Any:
    """Run ``op`` like its REST route would and answer the same JSON."""
    state = request.app.state
    instance: str = state.instance
    if op.op == "open":
        if state.draining:
            raise WorkerError(503, "the server is shutting down")
        req = OpenStreamRequest(mode=op.mode or "append", final=op.final, rid=op.rid,
                                sampling_params=op.sampling_params or SamplingParamsModel(),
                                **_content(body, op))  # fmt: skip
        rid, ack = await s.open_stream(req, client_key(request))
        reply = _ack(rid, ack, instance)
        if not op.lease:
            return reply
        return StreamingResponse(_lease(s, rid, reply), media_type="text/event-stream")
    if op.rid is None:
        raise WorkerError(400, f"stream operation {op.op} needs rid")
    check_origin(op, s.link.states, instance)
    if op.op == "chunk":
        chunk = ChunkRequest(final=op.final, mode=op.mode, sampling_params=op.sampling_params,
                             **_content(body, op))  # fmt: skip
        return _ack(op.rid, await s.add_chunk(op.rid, chunk), instance)
    if op.op == "abort":
        ack = await s.abort(op.rid)
        return {"rid": op.rid, "aborted": True, "input_tokens": ack.input_tokens}
    from srt_ext.api.reading import respond, sglang_frames

    st = s.get(op.rid)
    return await respond(s, st, request, shape=s.result,
                         abort_on_disconnect=state.opts.reader_disconnect == "abort",
                         frames=sglang_frames(s, st) if body.stream else None)  # fmt: skip


async def _lease(s: Any, rid: str, reply: dict[str, Any]) -> AsyncIterator[bytes]:
    """The ack, then silence until the stream ends (it does not count as a reader:
    the reaper still reaps a stream nobody feeds), then its end state."""
    yield b"data: " + orjson.dumps(reply) + b"\n\n"
    while True:
        st = s.link.states.get(rid)
        if st is None or st.done:
            break
        try:
            await st.wait_change(st.version, timeout=2.0)
        except TimeoutError:
            pass
    end = {"rid": rid, "done": True}
    if st is not None and st.error is not None:
        end["error"] = {"message": st.error.reason, "code": st.error.status}
    yield b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n"



__all__ = ["ENVELOPE", "StreamOp", "check_origin", "handle_stream_op", "stream_op"]
