"""The cluster's public URL: streams pinned to their replica, the rest to SGLang's router.

Why streams do not go through the router: sglang-router 0.3.2 forwards SGLang's
routes only (``/generate``, the OpenAI ones, ``/v1/models``); ``/v1/streams/...``
gets a 404 and there is no pass-through for other paths, and its only keyed
policy (``manual``, ``X-SMG-Routing-Key``) applies to the routes it forwards.
Carrying stream calls inside SGLang's ``/generate`` would mean replacing SGLang's
own ``/generate`` handler in every replica. So the gateway pins: an open goes to
the live replica with the fewest open streams (counted here, opens in flight
included), the stream id is remembered with that replica and its epoch, and
every later call of the stream goes straight to that replica's own
``/v1/streams`` routes (answers and errors are the single server's, plus a
``replica`` field in acks). One-shot requests go to the router as they are.

Never continue a stream where its KV is not: a replica that stopped answering
(connection refused) is marked down at once (and by the health loop, every
``health_interval_s``); when it answers again it is a new process (a new epoch).
A stream whose replica is down, restarted, or no longer knows it gets **410**
with the reason; a reader whose replica dies while it waits gets 410 too (an
error event on a streamed read).

"Open" for balance: from the open until the final chunk is acknowledged (or an
abort, or a 404/410 for it, or no call for ``stream_idle_timeout``, when the
replica reaps it). "Pending" for draining: until its result was read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("stream2llm.cluster")
KEEP_STREAMS = 100_000  # streams remembered (oldest forgotten first)
ONE_SHOT_TRIES = 6  # a one-shot the router could not deliver: tries over ~7 s
FLUSH_WAIT_S = 30.0  # /flush_cache: how long each replica is asked again while busy
GONE_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class ReplicaState:
    name: str
    url: str
    up: bool = True  # its HTTP port answers
    ready: bool = True  # its /health said 200 (not starting, not draining)
    epoch: int = 0  # +1 each time it comes back after being down (a new process)
    open: int = 0  # streams placed here whose final chunk has not been acknowledged
    placed: int = 0  # streams ever placed here (ties go to the least used)


@dataclass
class Placed:
    replica: int
    epoch: int
    counted: bool  # towards ``open`` of its replica
    last: float = field(default_factory=time.monotonic)
    pending: bool = True  # its result was not read yet (draining waits for it)
    ended: str | None = None  # the gateway ended it (shutdown): later calls get 410


@dataclass
class GatewayState:
    router_url: str
    replicas: list[ReplicaState]
    streams: OrderedDict[str, Placed] = field(default_factory=OrderedDict)
    draining: bool = False
    inflight: int = 0  # stream calls being relayed now
    idle_timeout: float = 300.0
    http: httpx.AsyncClient | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _tie: itertools.count = field(default_factory=itertools.count)

    # ---- placement and accounting ---------------------------------------------------
    def pick(self, exclude: set[int]) -> int | None:
        live = [i for i, r in enumerate(self.replicas) if r.up and r.ready and i not in exclude]
        if not live:
            return None
        return min(live, key=lambda i: (self.replicas[i].open, self.replicas[i].placed, i))

    def remember(self, rid: str, p: Placed) -> None:
        self.streams[rid] = p
        self.streams.move_to_end(rid)
        while len(self.streams) > KEEP_STREAMS:
            _, old = self.streams.popitem(last=False)
            self.release(old)

    def release(self, p: Placed) -> None:
        if p.counted:
            p.counted = False
            self.replicas[p.replica].open -= 1

    def end(self, p: Placed) -> None:
        """Its replica no longer holds it: not open, nothing left to drain."""
        self.release(p)
        p.pending = False

    def forget(self, rid: str) -> None:
        p = self.streams.pop(rid, None)
        if p is not None:
            self.release(p)

    def mark_down(self, i: int) -> None:
        r = self.replicas[i]
        if r.up and not self.draining:  # (stopping replicas is the drain's last step)
            log.warning("%s (%s) is down: its streams end with 410", r.name, r.url)
        r.up = r.ready = False

    def gone_reason(self, rid: str, p: Placed) -> str | None:
        """Why stream ``rid`` cannot continue (None: its replica still holds it)."""
        r = self.replicas[p.replica]
        if p.ended:
            return f"stream {rid} ended: {p.ended}"
        if not r.up:
            return (f"stream {rid} was on {r.name} ({r.url}), which is down; its KV was lost "
                    f"with it and cannot move: open a new stream")  # fmt: skip
        if r.epoch != p.epoch:
            return (f"stream {rid} was on {r.name} ({r.url}), which restarted since; its KV "
                    f"was lost with the old process: open a new stream")  # fmt: skip
        return None

    def quiet(self) -> bool:
        return self.inflight == 0 and not any(p.pending and not p.ended for p in self.streams.values())

    def wait_quiet(self, grace: float) -> bool:
        """(Any thread) wait up to ``grace`` s until no stream is pending and no call is in flight."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.quiet():
                return True
            time.sleep(0.1)
        return self.quiet()

    def abort_all(self, reason: str) -> None:
        """(Any thread) abort every pending stream on its replica; later calls get 410."""
        if self.loop is None or self.loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._abort_all(reason), self.loop)
        try:
            fut.result(30)
        except Exception as exc:  # noqa: BLE001  (best effort: the replicas stop next)
            log.warning("aborting open streams at shutdown: %r", exc)

    async def _abort_all(self, reason: str) -> None:
        assert self.http is not None
        todo = [(rid, p) for rid, p in self.streams.items() if p.pending and not p.ended]
        for _, p in todo:
            p.ended = reason
            self.release(p)

        async def one(rid: str, p: Placed) -> None:
            try:
                await self.http.delete(f"{self.replicas[p.replica].url}/v1/streams/{rid}", timeout=10)  # type: ignore[union-attr]
            except httpx.HTTPError:
                pass

        await asyncio.gather(*(one(rid, p) for rid, p in todo))

    # ---- the health loop ------------------------------------------------------------
    async def probe(self, i: int) -> None:
        assert self.http is not None
        r = self.replicas[i]
        try:
            resp = await self.http.get(r.url + "/health", timeout=5.0)
        except httpx.HTTPError:
            if await port_refuses(r.url):
                self.mark_down(i)
            return  # otherwise busy (a timeout): no news
        if not r.up:
            r.epoch += 1
            log.warning("%s (%s) is back (epoch %d)", r.name, r.url, r.epoch)
        r.up, r.ready = True, resp.status_code == 200

    async def health_loop(self, interval: float) -> None:
        while True:
            await asyncio.gather(*(self.probe(i) for i in range(len(self.replicas))))
            if self.idle_timeout > 0:  # the replica reaps idle streams: stop counting them
                cut = time.monotonic() - self.idle_timeout - 10
                for p in self.streams.values():
                    if p.counted and p.last < cut:
                        self.release(p)
            await asyncio.sleep(interval)


async def port_refuses(url: str, tries: int = 3) -> bool:
    """Whether nothing listens at ``url`` any more (its process is gone). A fresh
    connection each try: a pooled keep-alive one to a dead process fails with a
    reset, not a refusal, and would hide it."""
    for _ in range(tries):
        try:
            async with httpx.AsyncClient(timeout=3.0) as c:
                await c.get(url + "/health")
            return False
        except httpx.ConnectError:
            return True
        except httpx.TimeoutException:
            return False  # it is there, busy
        except httpx.HTTPError:
            await asyncio.sleep(0.1)  # reset mid-answer: ask again
    return False


def _err(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _as_error(status: int, body: bytes) -> JSONResponse:
    """A JSON error with an ``error`` string passes as it is; the router's own errors
    (plain text, or its JSON shape) become ours, with the cause kept in the reason."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        return JSONResponse(obj, status_code=status)
    text = body.decode(errors="replace").strip()[:500] or f"HTTP {status}"
    if status >= 500:
        return _err(502 if status not in (503, 504) else status, f"router: {text}")
    return _err(status, f"router: {text}")


def _with_replica(content: bytes, name: str) -> bytes:
    try:
        obj = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    if isinstance(obj, dict):
        obj["replica"] = name
        return orjson.dumps(obj)
    return content


def create_gateway_app(router_url: str, replicas: list[tuple[str, str]],
                       health_interval_s: float = 1.0, stream_idle_timeout: float = 300.0,
                       timeout: float = 3600.0) -> FastAPI:  # fmt: skip
    """The gateway (module doc); ``replicas``: (name, url) of each."""
    gw = GatewayState(router_url.rstrip("/"), [ReplicaState(n, u.rstrip("/")) for n, u in replicas],
                      idle_timeout=stream_idle_timeout)  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        gw.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)
        gw.loop = asyncio.get_running_loop()
        loop_task = asyncio.create_task(gw.health_loop(health_interval_s))
        try:
            yield
        finally:
            loop_task.cancel()
            await gw.http.aclose()

    app = FastAPI(title="stream2llm cluster gateway", lifespan=lifespan)
    app.state.gw = gw

    def _headers(request: Request) -> dict[str, str]:
        h = {"content-type": "application/json"}
        if "authorization" in request.headers:
            h["authorization"] = request.headers["authorization"]
        return h

    def _http() -> httpx.AsyncClient:
        assert gw.http is not None
        return gw.http

    def _relay(r: httpx.Response, name: str | None = None) -> Response:
        content = r.content
        if name is not None and r.status_code < 400:
            content = _with_replica(content, name)
        return Response(content, status_code=r.status_code,
                        media_type=r.headers.get("content-type", "application/json"))  # fmt: skip

    async def _replica_gone(i: int) -> bool:
        """After a failed call: is the replica's process gone (its port refuses)?"""
        if await port_refuses(gw.replicas[i].url):
            gw.mark_down(i)
            return True
        return False

    # ---- streams ------------------------------------------------------------------
    @app.post("/v1/streams", response_model=None)
    async def open_stream(request: Request) -> Response:
        if gw.draining:
            return _err(503, "the cluster is shutting down")
        raw = await request.body()
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("rid") is None:
            body["rid"] = uuid.uuid4().hex
        rid = body.get("rid") if isinstance(body, dict) else None
        if not isinstance(rid, str):  # not ours to judge: a replica answers it (400/422)
            i = gw.pick(set())
            if i is None:
                return _err(503, "no replica is up")
            try:
                r = await _http().post(gw.replicas[i].url + "/v1/streams", content=raw,
                                       headers=_headers(request))  # fmt: skip
            except httpx.HTTPError as exc:
                return _err(502, f"{gw.replicas[i].name}: {exc!r}")
            return _relay(r)
        old = gw.streams.get(rid)
        if old is not None and gw.gone_reason(rid, old) is None:
            return _err(409, f"stream {rid} already exists")
        counted = body.get("final") is not True
        tried: set[int] = set()
        while True:
            i = gw.pick(tried)
            if i is None:
                return _err(503, "no replica is up" if not tried else
                            f"stream {rid}: no replica could take it (tried {len(tried)})")  # fmt: skip
            rep = gw.replicas[i]
            rep.open += counted
            rep.placed += 1
            p = Placed(i, rep.epoch, counted)
            gw.inflight += 1
            try:
                r = await _http().post(rep.url + "/v1/streams", content=orjson.dumps(body),
                                       headers=_headers(request))  # fmt: skip
            except httpx.ConnectError:  # nothing ran: place it elsewhere
                gw.release(p)
                gw.mark_down(i)
                tried.add(i)
                continue
            except httpx.HTTPError as exc:
                gw.release(p)
                await _replica_gone(i)
                return _err(502, f"stream {rid}: {rep.name} failed while opening it ({exc!r})")
            finally:
                gw.inflight -= 1
            if r.status_code != 201:
                gw.release(p)
                return _relay(r)
            gw.remember(rid, p)
            return _relay(r, rep.name)

    async def _stream_call(request: Request, rid: str, method: str, path: str,
                           content: bytes | None = None) -> tuple[Placed | None, Response | httpx.Response]:  # fmt: skip
        """One call of stream ``rid`` on its replica: (its placement, the answer)."""
        p = gw.streams.get(rid)
        if p is None:
            return None, _err(404, f"unknown stream {rid}")
        why = gw.gone_reason(rid, p)
        if why:
            gw.end(p)
            return p, _err(410, why)
        p.last = time.monotonic()
        rep = gw.replicas[p.replica]
        req = _http().build_request(method, rep.url + path, content=content, headers=_headers(request))
        gw.inflight += 1
        try:
            r = await _http().send(req)
        except GONE_ERRORS as exc:
            if await _replica_gone(p.replica):
                gw.end(p)
                return p, _err(410, gw.gone_reason(rid, p) or f"stream {rid}: {rep.name} went away")
            return p, _err(502, f"stream {rid}: {rep.name} did not answer ({exc!r})")
        except httpx.HTTPError as exc:
            return p, _err(502, f"stream {rid}: {rep.name} did not answer ({exc!r})")
        finally:
            gw.inflight -= 1
        if r.status_code == 404 and b"unknown stream" in r.content:
            gw.end(p)  # it opened there, and that process no longer has it
            return p, _err(410, f"stream {rid} was opened on {rep.name} ({rep.url}), which no "
                                f"longer holds it (restarted, or it expired); its KV cannot "
                                f"move: open a new stream")  # fmt: skip
        return p, r

    @app.post("/v1/streams/{rid}/chunks", response_model=None)
    async def add_chunk(rid: str, request: Request) -> Response:
        content = await request.body()
        p, r = await _stream_call(request, rid, "POST", f"/v1/streams/{rid}/chunks", content)
        if not isinstance(r, httpx.Response):
            return r
        assert p is not None
        if r.status_code == 200:
            try:
                final = orjson.loads(content).get("final") is True
            except (orjson.JSONDecodeError, AttributeError):
                final = False
            if final:
                gw.release(p)
        return _relay(r, gw.replicas[p.replica].name)

    @app.get("/v1/streams/{rid}/result", response_model=None)
    async def result(rid: str, request: Request, stream: bool = False) -> Response:
        if stream:
            return await _stream_sse(request, rid)
        call = asyncio.ensure_future(_stream_call(request, rid, "GET", f"/v1/streams/{rid}/result"))
        while not call.done():  # a reader that leaves cancels its call (the replica sees it)
            await asyncio.wait({call}, timeout=0.5)
            if not call.done() and await request.is_disconnected():
                call.cancel()
                return Response(status_code=499)
        p, r = call.result()
        if p is not None:
            p.pending = False
            gw.release(p)  # its answer came: finished, or gone
        return _relay(r) if isinstance(r, httpx.Response) else r

    async def _stream_sse(request: Request, rid: str) -> Response:
        p = gw.streams.get(rid)
        if p is None:
            return _err(404, f"unknown stream {rid}")
        why = gw.gone_reason(rid, p)
        if why:
            return _err(410, why)
        rep = gw.replicas[p.replica]
        req = _http().build_request("GET", f"{rep.url}/v1/streams/{rid}/result?stream=true",
                                    headers=_headers(request))  # fmt: skip
        try:
            resp = await _http().send(req, stream=True)
        except httpx.HTTPError as exc:
            if await _replica_gone(p.replica):
                return _err(410, gw.gone_reason(rid, p) or f"stream {rid}: {rep.name} went away")
            return _err(502, f"stream {rid}: {rep.name} did not answer ({exc!r})")
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            return _relay(resp)

        async def relay() -> AsyncIterator[bytes]:
            gw.inflight += 1
            try:
                async for part in resp.aiter_raw():
                    yield part
                p.pending = False
            except httpx.HTTPError:  # its replica died mid-answer: say so in-band
                if await _replica_gone(p.replica):
                    gw.end(p)
                why = gw.gone_reason(rid, p) or f"stream {rid}: {rep.name} went away mid-answer"
                yield b"data: " + orjson.dumps({"error": {"message": why, "code": 410}}) + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                gw.inflight -= 1
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type"))  # fmt: skip

    @app.delete("/v1/streams/{rid}", response_model=None)
    async def abort(rid: str, request: Request) -> Response:
        p, r = await _stream_call(request, rid, "DELETE", f"/v1/streams/{rid}")
        if p is not None and (not isinstance(r, httpx.Response) or r.status_code < 300):
            gw.forget(rid)
        return _relay(r) if isinstance(r, httpx.Response) else r

    # ---- one-shot requests: SGLang's router --------------------------------------------
    async def _to_router(request: Request, path: str, content: bytes, retry: bool) -> Response:
        """Relay one call to the router (streamed answers stream). ``retry``: a one-shot
        the router could not deliver (it picked a replica that just died) goes again;
        nothing of it ran."""
        attempt, tries = 0, ONE_SHOT_TRIES if retry else 1
        while True:
            req = _http().build_request(request.method, gw.router_url + path, content=content,
                                        headers=_headers(request))  # fmt: skip
            try:
                resp = await _http().send(req, stream=True)
            except httpx.HTTPError as exc:
                return _err(502, f"router unreachable: {exc!r}")
            if resp.status_code < 400:
                break
            await resp.aread()
            await resp.aclose()
            undelivered = resp.status_code >= 500 and b"call_upstream_request_error" in resp.content
            attempt += 1
            if not undelivered or attempt == tries:
                return _as_error(resp.status_code, resp.content)
            await asyncio.sleep(0.5 * attempt)  # its health checks drop the dead one in ~2 s

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
        return await _to_router(request, path, await request.body(), retry=True)

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
        return await _to_router(request, "/v1/models", b"", retry=True)

    # ---- operations -----------------------------------------------------------------------
    @app.post("/flush_cache", response_model=None)
    async def flush_cache(request: Request, timeout: float = FLUSH_WAIT_S) -> JSONResponse:
        """Every live replica's own ``/flush_cache``; 200 only if each flushed. SGLang
        refuses while a request is queued or running or a stream is parked: each
        replica is asked again for up to ``timeout`` s (its last refusal is kept)."""
        deadline = time.monotonic() + timeout

        async def one(r: ReplicaState) -> tuple[str, dict[str, Any]]:
            while True:
                left = round(max(0.0, deadline - time.monotonic()), 3)
                try:
                    resp = await _http().post(r.url + "/flush_cache", params={"timeout": left},
                                              headers=_headers(request), timeout=left + 30)  # fmt: skip
                except httpx.HTTPError as exc:
                    return r.name, {"status": 502, "reason": f"unreachable: {exc!r}"}
                if resp.status_code != 400 or time.monotonic() + 0.2 > deadline:
                    return r.name, {"status": resp.status_code, "reason": resp.text.strip()[:300]}
                await asyncio.sleep(0.2)

        got = dict(await asyncio.gather(*(one(r) for r in gw.replicas if r.up)))
        ok = bool(got) and all(v["status"] == 200 for v in got.values())
        return JSONResponse({"flushed": ok, "replicas": got}, status_code=200 if ok else 400)

    @app.get("/health")
    async def health() -> JSONResponse:
        from srt_ext.cluster.health import cluster_health

        body, status = await cluster_health(_http(), gw.router_url, gw.replicas, gw.draining)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/stats")
    async def stats(request: Request) -> JSONResponse:
        from srt_ext.cluster.health import cluster_stats

        return JSONResponse(await cluster_stats(_http(), gw.replicas, _headers(request)))

    return app
