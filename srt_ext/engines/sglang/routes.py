"""``/v1/streams`` and ``/v1/stats`` on SGLang's own FastAPI app.

The same REST API as the reference server (docs/api.md): the bodies are parsed
with the same pydantic models (``srt_ext.api.models``), except that
``sampling_params`` takes SGLang's whole vocabulary (``SGLangSamplingParamsModel``:
this engine serves it), and errors have the same shape, ``{"error": reason}``
(422 adds ``detail``). Keys, limits and readers leaving: ``http_policy``,
``frontend``. Bodies are validated here
rather than by FastAPI so that SGLang's app-wide validation handler (which
answers in OpenAI's error format) does not apply to these routes. ``/generate``,
the OpenAI routes, ``/health`` and ``/metrics`` stay SGLang's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from srt_ext.api.limits import client_key
from srt_ext.api.models import (
    SGLangChunkRequest,
    SGLangOpenStreamRequest,
    SGLangSamplingParamsModel,
)
from srt_ext.engines.sglang.frontend import (
    HttpStream,
    ReaderGone,
    StreamFrontend,
    StreamHTTPError,
)
from srt_ext.engines.sglang.realtime import add_realtime_route

_MARK = "stream2llm_routes"
logger = logging.getLogger(__name__)


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _error(status: int, reason: str, **extra: Any) -> Response:
    return _json({"error": reason, **extra}, status)


def sglang_sampling(sp: SGLangSamplingParamsModel) -> dict[str, Any]:
    """SGLang's ``sampling_params`` for a stream (400 for what a stream cannot do);
    SGLang's tokenizer manager checks the values (``SamplingParams.verify``)."""
    why = sp.stream_error()
    if why:
        raise StreamHTTPError(400, why)
    return sp.sglang()


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        raw = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise StreamHTTPError(400, f"body is not JSON: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
        raise _Invalid(reason or "invalid request", errs) from None


class _Invalid(Exception):
    def __init__(self, reason: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _frontend() -> StreamFrontend:
    from sglang.srt.entrypoints.http_server import get_global_state

    state = get_global_state()
    fe = getattr(getattr(state, "tokenizer_manager", None), "stream2llm_frontend", None)
    if fe is None:
        raise StreamHTTPError(503, "the stream frontend is not installed (server starting?)")
    return fe


def _ack(rid: str, out: Any) -> dict[str, Any]:
    return {"rid": rid, "input_tokens": out.input_tokens, "cached_tokens": out.cached_tokens,
            "invalidated_tokens": out.invalidated_tokens}  # fmt: skip


async def _guard(coro: Any) -> Response:
    try:
        return await coro
    except StreamHTTPError as exc:
        return _error(exc.status, exc.reason)
    except _Invalid as exc:
        return _error(422, exc.reason, detail=exc.detail)
    except Exception as exc:  # noqa: BLE001  (an unexpected failure is still JSON)
        logger.exception("stream route failed")
        return _error(500, f"{type(exc).__name__}: {exc}")


async def _sse(fe: StreamFrontend, st: HttpStream) -> AsyncIterator[bytes]:
    """SGLang's /generate stream: cumulative text and ids per event, then [DONE]; a
    reader leaving early aborts the stream under ``--reader-disconnect abort``."""
    sent = -1
    st.readers += 1
    try:
        async for frame in _frames(fe, st, sent):
            yield frame
    finally:
        st.readers -= 1
        fe.reader_left(st)


async def _read(fe: StreamFrontend, st: HttpStream, request: Request) -> Response:
    """The result once done; under ``--reader-disconnect abort`` the reader is
    watched, and one that leaves first aborts the stream (a bare 499)."""
    if fe.policy.reader_disconnect != "abort":
        return _json(fe.result(await fe.wait_done(st)))
    try:
        await fe.wait_done(st, request.is_disconnected)
    except ReaderGone:
        fe.reader_left(st)
        return Response(status_code=499)  # nobody is there to read it
    except asyncio.CancelledError:
        fe.reader_left(st)
        raise
    return _json(fe.result(st))


async def _frames(fe: StreamFrontend, st: HttpStream, sent: int) -> AsyncIterator[bytes]:
    while True:
        changed, done = st.changed, st.done
        if st.error is not None:
            err = {"error": {"message": st.error.reason, "code": st.error.status}}
            yield b"data: " + orjson.dumps(err) + b"\n\n"
            break
        n = len(st.out["output_ids"]) if st.out else 0
        if n != sent or done:
            sent = n
            yield b"data: " + orjson.dumps(fe.result(st)) + b"\n\n"
        if done:
            break
        await changed.wait()
    yield b"data: [DONE]\n\n"


def add_stream_routes(app: FastAPI) -> None:
    """Add the stream routes to ``app`` once."""
    if getattr(app.state, _MARK, False):
        return
    setattr(app.state, _MARK, True)

    async def open_stream(request: Request) -> Response:
        async def run() -> Response:
            body = await _body(request, SGLangOpenStreamRequest)
            fe = _frontend()
            has_input = body.text is not None or body.input_ids is not None
            ids = fe.ids(body.text, body.input_ids, first=True) if has_input else None
            out = await fe.open(body.rid, body.mode, sglang_sampling(body.sampling_params),
                                ids, body.final, text=body.text, client=client_key(request))  # fmt: skip
            return _json(_ack(out.rid, out), 201)

        return await _guard(run())

    async def add_chunk(rid: str, request: Request) -> Response:
        async def run() -> Response:
            body = await _body(request, SGLangChunkRequest)
            sp = sglang_sampling(body.sampling_params) if body.sampling_params else None
            out = await _frontend().chunk(rid, body.text, body.input_ids, body.final,
                                          body.mode, sp)  # fmt: skip
            return _json(_ack(rid, out))

        return await _guard(run())

    async def result(rid: str, request: Request, stream: bool = False) -> Response:
        async def run() -> Response:
            fe = _frontend()
            st = fe.get(rid)
            if stream:
                return StreamingResponse(_sse(fe, st), media_type="text/event-stream")
            return await _read(fe, st, request)

        return await _guard(run())

    async def abort(rid: str) -> Response:
        async def run() -> Response:
            out = await _frontend().abort(rid)
            return _json({"rid": rid, "aborted": True, "input_tokens": out.input_tokens})

        return await _guard(run())

    async def stats() -> Response:
        async def run() -> Response:
            return _json(await _frontend().stats())

        return await _guard(run())

    app.add_api_route("/v1/streams", open_stream, methods=["POST"])
    app.add_api_route("/v1/streams/{rid}/chunks", add_chunk, methods=["POST"])
    app.add_api_route("/v1/streams/{rid}/result", result, methods=["GET"])
    app.add_api_route("/v1/streams/{rid}", abort, methods=["DELETE"])
    app.add_api_route("/v1/stats", stats, methods=["GET"])
    add_realtime_route(app)  # /v1/realtime (OpenAI Realtime, text): realtime.py
