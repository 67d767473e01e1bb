"""The API room: FastAPI app with the stream, SGLang-native and admin routes.

Routes are thin: parse (pydantic), call ``Service``, shape JSON (orjson). The
worker process is started in the app's lifespan and stopped with it, so one
``uvicorn`` run is one complete server. OpenAI-compatible routes live in
``openai_api.py``. See docs/api.md for the reference.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from srt_ext.api.lifecycle import DrainGate
from srt_ext.api.limits import BodyLimit, Limits, client_key, load_api_keys
from srt_ext.api.metrics import Metrics
from srt_ext.api.models import ChunkRequest, GenerateRequest, OpenStreamRequest
from srt_ext.api.options import ServerOptions
from srt_ext.api.reading import respond, sglang_frames
from srt_ext.api.reaper import reap_loop
from srt_ext.api.req_state import WorkerError
from srt_ext.api.service import Service
from srt_ext.api.supervisor import Supervisor
from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.api.worker_link import WorkerLink
from srt_ext.cluster.envelope import handle_stream_op, stream_op
from srt_ext.engines.reference.model_store import DEFAULT_MODEL
from srt_ext.worker.process import start_worker


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's own ORJSONResponse is deprecated and warns)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def resolve_model_path(path: str | None) -> str:
    """A model name or checkpoint dir (None: the default model) -> the dir to load."""
    from srt_ext.engines.reference.model_store import resolve_model

    return str(resolve_model(path))


def _error(status: int, reason: str, **extra: Any) -> ORJSONResponse:
    return ORJSONResponse({"error": reason, **extra}, status_code=status)


def create_app(opts: ServerOptions, start_proc: Callable[[str, str], Any] | None = None) -> FastAPI:
    """The whole server; ``start_proc(in_addr, out_addr)`` may replace the worker launcher."""
    model_path = resolve_model_path(opts.worker.model_path)

    def launch(in_addr: str, out_addr: str) -> Any:
        return start_worker(opts.worker_config(in_addr, out_addr, model_path), opts.start_method)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        link = WorkerLink(start_proc or launch)
        limits = Limits(opts.max_input_tokens or None, opts.max_streams_per_client or None)
        s = app.state.svc = Service(link, TokenizerRoom(model_path), Metrics(),
                                    opts.health_timeout, limits)  # fmt: skip
        tasks: list[asyncio.Task[None]] = []
        try:
            await link.start(opts.ready_timeout)
            sup = Supervisor(link, s.metrics, opts.max_worker_restarts, opts.restart_backoff,
                             opts.ready_timeout)  # fmt: skip
            tasks.append(asyncio.create_task(sup.run()))
            if opts.stream_idle_timeout:
                tasks.append(asyncio.create_task(reap_loop(s, opts.stream_idle_timeout)))
            yield
        finally:
            for t in tasks:
                t.cancel()
            await link.close()

    app = FastAPI(title="stream2llm", default_response_class=ORJSONResponse, lifespan=lifespan)
    app.state.opts = opts
    app.state.draining = False
    app.state.instance = uuid.uuid4().hex[:12]  # this process's identity (stream origin)
    app.add_middleware(DrainGate, state=app.state)
    if opts.max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)

    @app.exception_handler(WorkerError)
    async def _worker_error(request: Request, exc: WorkerError) -> ORJSONResponse:
        if 400 <= exc.status < 500 and hasattr(request.app.state, "svc"):
            request.app.state.svc.metrics.rejected.labels(str(exc.status)).inc()
        return _error(exc.status, exc.reason)

    @app.exception_handler(ValidationError)
    async def _bad_value(_: Request, exc: ValidationError) -> ORJSONResponse:
        """A value only checked after parsing (e.g. an OpenAI seed mapped to SGLang's
        range) is the client's error, not a 500."""
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
        return _error(422, reason or "invalid request", detail=errs)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
        return _error(422, reason or "invalid request", detail=errs)

    keys = load_api_keys(opts.api_key_file) if opts.api_key_file else {}
    if opts.api_key:
        keys.setdefault(opts.api_key, "")  # one shared key: clients stay per IP (limits.py)
    if keys:
        bearer = [(f"Bearer {k}".encode(), name) for k, name in keys.items()]

        @app.middleware("http")
        async def _auth(request: Request, call_next: Any) -> Response:
            if request.url.path not in ("/health", "/livez"):
                got = request.headers.get("authorization", "").encode()
                # compare with every key (constant time each) so timing says nothing
                hits = [name for b, name in bearer if hmac.compare_digest(got, b)]
                if not hits:
                    return _error(401, "missing or wrong API key (Authorization: Bearer KEY)")
                request.state.api_key_name = hits[0] or None
            return await call_next(request)

    def svc(request: Request) -> Service:
        return request.app.state.svc

    # ---- streams ------------------------------------------------------------------
    @app.post("/v1/streams", status_code=201)
    async def open_stream(body: OpenStreamRequest, request: Request) -> dict[str, Any]:
        rid, ack = await svc(request).open_stream(body, client_key(request))
        return {"rid": rid, "input_tokens": ack.input_tokens, "cached_tokens": ack.cached_tokens,
                "invalidated_tokens": ack.invalidated_tokens}  # fmt: skip

    @app.post("/v1/streams/{rid}/chunks")
    async def add_chunk(rid: str, body: ChunkRequest, request: Request) -> dict[str, Any]:
        ack = await svc(request).add_chunk(rid, body)
        return {"rid": rid, "input_tokens": ack.input_tokens, "cached_tokens": ack.cached_tokens,
                "invalidated_tokens": ack.invalidated_tokens}  # fmt: skip

    @app.get("/v1/streams/{rid}/result", response_model=None)
    async def result(rid: str, request: Request, stream: bool = False) -> Any:
        s = svc(request)
        st = s.get(rid)
        return await respond(s, st, request, shape=s.result,
                             abort_on_disconnect=request.app.state.opts.reader_disconnect == "abort",
                             frames=sglang_frames(s, st) if stream else None)  # fmt: skip

    @app.delete("/v1/streams/{rid}")
    async def abort(rid: str, request: Request) -> dict[str, Any]:
        ack = await svc(request).abort(rid)
        return {"rid": rid, "aborted": True, "input_tokens": ack.input_tokens}

    # ---- SGLang-native ----------------------------------------------------------------
    @app.post("/generate", response_model=None)
    async def generate(body: GenerateRequest, request: Request) -> Any:
        s = svc(request)
        op = stream_op(body)
        if op is not None:  # a stream operation carried through SGLang's router
            return await handle_stream_op(op, body, request, s)
        if request.app.state.draining:
            raise WorkerError(503, "the server is shutting down")
        st = await s.generate_req(body)
        return await respond(s, st, request, abort_on_disconnect=True, shape=s.take_result,
                             frames=sglang_frames(s, st) if body.stream else None)  # fmt: skip

    # ---- admin -----------------------------------------------------------------------
    @app.post("/flush_cache")
    async def flush_cache(request: Request) -> dict[str, Any]:
        return {"flushed_tokens": await svc(request).flush_cache()}

    @app.get("/health")
    async def health(request: Request) -> ORJSONResponse:
        if request.app.state.draining:
            return ORJSONResponse({"status": "draining"}, status_code=503)
        ok = await svc(request).healthy()
        return ORJSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/livez")
    async def livez(request: Request) -> ORJSONResponse:
        """Alive, draining or not: what SGLang's router health-checks in a cluster, so
        a draining replica keeps receiving its own streams' chunks (docs/scale-out.md).
        Cheap on purpose (no worker round trip: the watchdog notices a dead worker
        within 0.25 s), so a busy replica is not mistaken for a dead one.
        ``instance`` changes when the process restarts."""
        ok = not svc(request).link.dead
        return ORJSONResponse({"status": "ok" if ok else "unavailable",
                               "instance": request.app.state.instance},
                              status_code=200 if ok else 503)  # fmt: skip

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return await svc(request).stats()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        s = svc(request)
        try:
            await s.stats()
        except WorkerError:
            pass  # still expose what the API room counted itself
        return Response(s.metrics.exposition(), media_type="text/plain; version=0.0.4")

    from srt_ext.api.openai_api import add_openai_routes

    add_openai_routes(app, svc, model_name=opts.worker.model_path or DEFAULT_MODEL)
    from srt_ext.api.sglang_compat import add_sglang_info_routes

    w = opts.worker
    add_sglang_info_routes(app, svc, model_path, w.model_path or DEFAULT_MODEL,
                           {"max_total_num_tokens": w.max_total_tokens,
                            "schedule_policy": w.policy,
                            "chunked_prefill_size": w.token_budget})  # fmt: skip
    return app
