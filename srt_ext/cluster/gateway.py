"""The cluster's public URL: our REST API, mapped onto SGLang's router.

Why a gateway at all: sglang-router forwards SGLang's routes only (its
``/v1/streams/...`` answer is a 404), so clients that speak our stream API need
something that speaks it. This is not a second router: it never chooses a
replica. Each stream call becomes one ``POST /generate`` to the router carrying
the operation in ``session_params`` (srt_ext/cluster/envelope.py) with
``X-SMG-Routing-Key: <stream id>``; the router's ``manual`` policy pins the key
to a replica on first sight (``--assignment-mode min_load``) and sends every
later call with that key to the same replica. SGLang-native and OpenAI routes
go to the router as they are. What the gateway keeps per stream is what the
router cannot: the replica that answered the open (its ``origin``, so a replica
that did not open a stream refuses it with a 410) and the open's lease (the
response the replica holds open while the stream lives, which is what makes
``min_load`` count open streams). The file is ~310 lines because every route of
our API has its mapping here, one short function each; they share one ``_send``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from srt_ext.api.models import ChunkRequest, OpenStreamRequest
from srt_ext.cluster.envelope import ENVELOPE

log = logging.getLogger("stream2llm.cluster")
ROUTING_KEY = "X-SMG-Routing-Key"  # sglang-router's manual-policy header
KEEP_STREAMS = 100_000  # stream origins remembered (oldest forgotten first)
ONE_SHOT_TRIES = 6  # a one-shot the router could not deliver: tries over ~7 s


@dataclass
class GatewayState:
    router_url: str
    replica_urls: list[str] = field(default_factory=list)
    origin: OrderedDict[str, str] = field(default_factory=OrderedDict)  # rid -> replica id
    leases: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    http: httpx.AsyncClient | None = None

    def remember(self, rid: str, replica: str) -> None:
        self.origin[rid] = replica
        self.origin.move_to_end(rid)
        while len(self.origin) > KEEP_STREAMS:
            self.origin.popitem(last=False)


def _err(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _as_error(status: int, body: bytes) -> JSONResponse:
    """A replica's JSON error passes as it is; the router's own errors (plain text,
    or its JSON shape) become ours, with the cause kept in the reason."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        return JSONResponse(obj, status_code=status)
    text = body.decode(errors="replace").strip()[:500] or f"HTTP {status}"
    if status >= 500:  # the router could not reach the stream's replica
        return _err(502 if status not in (503, 504) else status, f"router: {text}")
    return _err(status, f"router: {text}")


def _envelope(op: str, rid: str | None, text: str | None, input_ids: list[int] | None,
              stream: bool = False, **fields: Any) -> dict[str, Any]:  # fmt: skip
    env: dict[str, Any] = {"op": op, "rid": rid, **{k: v for k, v in fields.items() if v is not None}}
    body: dict[str, Any] = {"stream": stream, "session_params": {ENVELOPE: env}}
    if input_ids is not None:
        body["input_ids"] = input_ids
    else:  # the router wants exactly one of text / input_ids
        body["text"] = text or ""
        env["has_input"] = text is not None
    return body


def create_gateway_app(router_url: str, replica_urls: list[str] | None = None,
                       timeout: float = 3600.0) -> FastAPI:  # fmt: skip
    """The gateway (module doc); ``replica_urls`` only feed ``/health`` and ``/v1/stats``."""
    gw = GatewayState(router_url.rstrip("/"), list(replica_urls or []))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        gw.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)
        try:
            yield
        finally:
            for t in list(gw.leases):
                t.cancel()
            await gw.http.aclose()

    app = FastAPI(title="stream2llm cluster gateway", lifespan=lifespan)
    app.state.gw = gw

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
        return JSONResponse({"error": reason or "invalid request", "detail": errs}, status_code=422)

    def _headers(request: Request, rid: str | None = None) -> dict[str, str]:
        h = {"content-type": "application/json"}
        if "authorization" in request.headers:
            h["authorization"] = request.headers["authorization"]
        if rid is not None:
            h[ROUTING_KEY] = rid
        return h

    def _http() -> httpx.AsyncClient:
        assert gw.http is not None
        return gw.http

    async def _call(request: Request, rid: str, body: dict[str, Any]) -> Response:
        try:
            r = await _http().post(gw.router_url + "/generate", json=body,
                                   headers=_headers(request, rid))  # fmt: skip
        except httpx.HTTPError as exc:
            return _err(502, f"router unreachable: {exc!r}")
        if r.status_code >= 400:
            return _as_error(r.status_code, r.content)
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    async def _send(request: Request, path: str, rid: str | None, method: str = "POST",
                    **body: Any) -> httpx.Response | JSONResponse:  # fmt: skip
        """One call to the router, answer streamed; an error answer comes back read and closed."""
        req = _http().build_request(method, gw.router_url + path, headers=_headers(request, rid),
                                    **body)  # fmt: skip
        try:
            resp = await _http().send(req, stream=True)
        except httpx.HTTPError as exc:
            return _err(502, f"router unreachable: {exc!r}")
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
        return resp

    # ---- streams ------------------------------------------------------------------
    @app.post("/v1/streams", status_code=201, response_model=None)
    async def open_stream(body: OpenStreamRequest, request: Request) -> Any:
        if gw.draining:
            return _err(503, "the cluster is shutting down")
        rid = body.rid or uuid.uuid4().hex
        sp = body.sampling_params.model_dump(exclude_defaults=True)
        env = _envelope("open", rid, body.text, body.input_ids, stream=True, mode=body.mode,
                        final=body.final, sampling_params=sp, lease=True)  # fmt: skip
        resp = await _send(request, "/generate", rid, json=env)
        if isinstance(resp, JSONResponse):
            return resp
        if resp.status_code >= 400:
            return _as_error(resp.status_code, resp.content)
        lines = resp.aiter_lines()
        ack: dict[str, Any] | None = None
        try:
            async for line in lines:
                if line.startswith("data:"):
                    ack = orjson.loads(line[5:])
                    break
        except httpx.HTTPError as exc:
            await resp.aclose()
            return _err(502, f"stream {rid}: the replica went away while opening it ({exc!r})")
        if not isinstance(ack, dict) or "rid" not in ack:
            await resp.aclose()
            return _err(502, f"stream {rid}: no open acknowledgement from the replica")
        gw.remember(rid, str(ack.get("replica", "")))
        task = asyncio.create_task(_hold(resp, lines))
        gw.leases.add(task)
        task.add_done_callback(gw.leases.discard)
        return JSONResponse(ack, status_code=201)

    async def _hold(resp: httpx.Response, lines: AsyncIterator[str]) -> None:
        """Keep the open's response (the lease) until the replica ends it."""
        try:
            async for _ in lines:
                pass
        except httpx.HTTPError:
            pass  # replica or router gone: the stream's next call says what happened
        finally:
            await resp.aclose()

    @app.post("/v1/streams/{rid}/chunks", response_model=None)
    async def add_chunk(rid: str, body: ChunkRequest, request: Request) -> Response:
        sp = body.sampling_params.model_dump(exclude_defaults=True) if body.sampling_params else None
        env = _envelope("chunk", rid, body.text, body.input_ids, final=body.final, mode=body.mode,
                        sampling_params=sp, origin=gw.origin.get(rid))  # fmt: skip
        return await _call(request, rid, env)

    @app.get("/v1/streams/{rid}/result", response_model=None)
    async def result(rid: str, request: Request, stream: bool = False) -> Response:
        env = _envelope("result", rid, None, None, stream=stream, origin=gw.origin.get(rid))
        if stream:
            return await _proxy_stream(request, "/generate", orjson.dumps(env), rid, "POST")
        call = asyncio.ensure_future(_call(request, rid, env))
        while not call.done():  # a reader that leaves cancels its call (the replica sees it)
            await asyncio.wait({call}, timeout=0.5)
            if not call.done() and await request.is_disconnected():
                call.cancel()
                return Response(status_code=499)
        return call.result()

    @app.delete("/v1/streams/{rid}", response_model=None)
    async def abort(rid: str, request: Request) -> Response:
        env = _envelope("abort", rid, None, None, origin=gw.origin.get(rid))
        return await _call(request, rid, env)

    # ---- everything else: the router's own routes ----------------------------------------
    async def _proxy_stream(request: Request, path: str, content: bytes, rid: str | None = None,
                            method: str | None = None, retry: bool = False) -> Response:  # fmt: skip
        """Relay one call to the router (streamed both ways). ``retry``: a one-shot
        request the router could not deliver (its replica just died) is sent again;
        nothing of it ran, and a one-shot has no state to lose. Stream calls never
        retry: a chunk applied twice would corrupt its stream."""
        attempt, tries = 0, ONE_SHOT_TRIES if retry else 1
        while True:
            resp = await _send(request, path, rid, method or request.method, content=content)
            if isinstance(resp, JSONResponse):
                return resp
            if resp.status_code < 400:
                break
            undelivered = resp.status_code >= 500 and b"call_upstream_request_error" in resp.content
            attempt += 1
            if not undelivered or attempt == tries:
                return _as_error(resp.status_code, resp.content)
            # the router sent it to a replica that just died: its health checks drop that
            await asyncio.sleep(0.5 * attempt)  # one within seconds

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for part in resp.aiter_raw():
                    yield part
            except httpx.HTTPError as exc:  # the replica died mid-answer: say so in-band
                err = {"error": {"message": f"the replica went away: {exc!r}", "code": 502}}
                yield b"data: " + orjson.dumps(err) + b"\n\ndata: [DONE]\n\n"
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type"))  # fmt: skip

    async def _one_shot(request: Request, path: str) -> Response:
        if gw.draining:
            return _err(503, "the cluster is shutting down")
        content = await request.body()
        if path == "/generate":
            content = _router_sampling(content)
        # a fresh key: the manual policy then picks the least-loaded healthy replica
        # (without a key it falls back to a random one, dead or not)
        return await _proxy_stream(request, path, content, f"oneshot-{uuid.uuid4().hex}",
                                   retry=True)  # fmt: skip

    @app.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        return await _one_shot(request, "/generate")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await _one_shot(request, "/v1/completions")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        return await _one_shot(request, "/v1/chat/completions")

    @app.get("/v1/models", response_model=None)
    async def models(request: Request) -> Response:
        return await _proxy_stream(request, "/v1/models", b"")

    @app.post("/flush_cache", response_model=None)
    async def flush_cache(request: Request) -> Response:
        return await _proxy_stream(request, "/flush_cache", b"")

    # ---- operations -----------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        from srt_ext.cluster.health import cluster_health

        body, status = await cluster_health(_http(), gw.router_url, gw.replica_urls, gw.draining)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/stats")
    async def stats(request: Request) -> JSONResponse:
        from srt_ext.cluster.health import cluster_stats

        return JSONResponse(await cluster_stats(_http(), gw.replica_urls, _headers(request)))

    return app


def _router_sampling(content: bytes) -> bytes:
    """The router drops unknown sampling fields; ``seed`` travels as SGLang's
    ``sampling_seed`` (the replicas read either)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content  # the router answers it with its own 4xx
    sp = body.get("sampling_params") if isinstance(body, dict) else None
    if isinstance(sp, dict) and "seed" in sp and "sampling_seed" not in sp:
        sp["sampling_seed"] = sp.pop("seed")
        return orjson.dumps(body)
    return content
