"""Reading a request's output: wait for it or stream it, abort it when the reader leaves.

Every route that hands out a request's output (``/generate``, the OpenAI routes,
``GET /v1/streams/{rid}/result``, the cluster envelope) goes through ``respond``:
either an SSE body rendered from ``follow`` (one wake-up per change of the request),
or a wait that checks every ``poll_s`` whether the client is still there. Why the
abort: a one-shot whose client went away would otherwise hold its KV and its share
of every step until ``max_new_tokens``; a stream is aborted only when the server was
asked to (``--reader-disconnect abort``), because its reader may come back. While a
reader waits the request counts as read (``readers``), so the reaper leaves it alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from srt_ext import messages as m
from srt_ext.api.req_state import ReqState

if TYPE_CHECKING:
    from srt_ext.api.service import Service

log = logging.getLogger("stream2llm.server")
Frames = Callable[[AsyncIterator[bool]], AsyncIterator[bytes]]


class ReaderGone(Exception):
    """The client of a plain result read disconnected before the result was ready."""


async def abandon(svc: Service, st: ReqState) -> None:
    """The reader left before the end: stop computing for it (best effort)."""
    if st.mode != "oneshot":
        svc.metrics.reaped.labels("disconnect").inc()
    try:
        await svc.link.send(m.Abort(svc.link.next_id(), st.rid))
    except Exception:  # noqa: BLE001  (e.g. the link closed under a shutdown)
        log.warning("could not abort %s after its reader left", st.rid, exc_info=True)


async def wait_result(svc: Service, st: ReqState,
                      disconnected: Callable[[], Awaitable[bool]] | None = None,
                      abort_on_disconnect: bool = False, poll_s: float = 0.5) -> ReqState:  # fmt: skip
    """Wait until ``st`` is done. With ``disconnected``, it is checked every ``poll_s``:
    a reader that left raises ``ReaderGone``; with ``abort_on_disconnect`` a reader
    that leaves (or is cancelled) before the end aborts the request."""
    st.readers += 1
    try:
        while not st.done:
            try:
                await st.wait_change(st.version, timeout=poll_s if disconnected else None)
            except TimeoutError:
                pass
            if not st.done and disconnected is not None and await disconnected():
                raise ReaderGone(st.rid)
    finally:
        st.readers -= 1
        st.last_active = time.monotonic()
        if abort_on_disconnect and not st.done:
            await abandon(svc, st)
    return st


async def follow(svc: Service, st: ReqState, abort_on_disconnect: bool) -> AsyncIterator[bool]:
    """Yield ``st.done`` now and after every change of ``st``, until it is done (an
    error counts as done). A consumer that stops early (its client went away) aborts
    the request when ``abort_on_disconnect``."""
    st.readers += 1
    try:
        while True:
            seen, done = st.version, st.done
            yield done
            if done:
                return
            await st.wait_change(seen)
    finally:
        st.readers -= 1
        st.last_active = time.monotonic()
        if abort_on_disconnect and not st.done:
            await abandon(svc, st)


async def respond(svc: Service, st: ReqState, request: Request, *, abort_on_disconnect: bool,
                  shape: Callable[[ReqState], Any], frames: Frames | None = None) -> Any:  # fmt: skip
    """The one way a route returns a request's output: with ``frames`` an SSE response
    (``frames`` renders the changes ``follow`` reports), else ``shape(st)`` once it is
    done, or a bare 499 when the client left first."""
    if frames is not None:
        changes = follow(svc, st, abort_on_disconnect)
        return StreamingResponse(_closing(frames, changes), media_type="text/event-stream")
    try:
        await wait_result(svc, st, request.is_disconnected, abort_on_disconnect)
    except ReaderGone:
        return Response(status_code=499)  # nobody is there to read it
    return shape(st)


async def _closing(frames: Frames, changes: AsyncIterator[bool]) -> AsyncIterator[bytes]:
    """Close ``follow`` as soon as the frames stop (not whenever it is collected)."""
    async with aclosing(changes):  # type: ignore[type-var]
        async for frame in frames(changes):
            yield frame


def sglang_frames(svc: Service, st: ReqState) -> Frames:
    """SGLang's /generate stream: cumulative text/output_ids per event, then [DONE]."""

    async def frames(changes: AsyncIterator[bool]) -> AsyncIterator[bytes]:
        sent = -1
        async for done in changes:
            if st.error is not None:
                err = {"error": {"message": st.error.reason, "code": st.error.status}}
                yield b"data: " + orjson.dumps(err) + b"\n\n"
                break
            if len(st.output_ids) != sent or done:
                sent = len(st.output_ids)
                yield b"data: " + orjson.dumps(svc.result(st)) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return frames
